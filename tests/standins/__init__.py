"""Stand-ins for external systems that cannot run here, so the tests talk to them over real HTTP
or a real process instead of mocks.

Each module says in its docstring what it emulates and how far (which API subset, which
behaviour), and every test module that uses one says so in its own docstring:

* ``kfp_standin``: the Kubeflow Pipelines v2beta1 REST API, in memory; tested by
  ``test_kfp_standin.py``. It stays a stand-in because the KFP backend needs Argo, MySQL,
  ML Metadata and container images, none of which can run here.
* ``http_standin``: the request handler frame and request log of the KFP stand-in.
* ``mlflow_server``: not an emulator: a real ``mlflow server`` process that a test can stop and
  start again, kept here as test infrastructure.

Kubernetes is not emulated here any more: the tests marked ``cluster`` run against the real
control plane (kube-apiserver, kube-controller-manager, kube-scheduler, etcd) of tests/cluster,
whose node agent is the one simulated part (docs/cluster.md, section 9).
"""
