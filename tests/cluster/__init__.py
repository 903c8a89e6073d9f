"""The real Kubernetes control plane on loopback, as test infrastructure.

``control_plane`` starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler
(built from the official Go modules by ``scripts/k8s-control-plane.sh build``) plus
``node_agent``, the one simulated part: a stand-in kubelet that runs pods as local processes.
``fixtures`` holds the pytest fixtures, ``steps`` a namespace ready for the executor. See
docs/cluster.md, section 9.
"""
