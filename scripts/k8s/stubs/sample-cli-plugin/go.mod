// Stub for k8s.io/sample-cli-plugin, which the module proxy does not serve at v0.37.2.
// kube-apiserver, kube-controller-manager and kube-scheduler import no package
// of it; the stub only satisfies the replace block in ../../kubernetes/go.mod.
module k8s.io/sample-cli-plugin

go 1.26.0
