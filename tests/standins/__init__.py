"""Stand-ins for external systems that cannot run here, so the tests talk to them over real HTTP
or a real process instead of mocks.

Each module says in its docstring what it emulates and how far (which API subset, which
behaviour), and every test module that uses one says so in its own docstring:

* ``k8s_standin``: the Kubernetes API server plus a Job controller, running each Job's command
  as a local process; tested by ``test_k8s_standin.py``.
* ``kfp_standin``: the Kubeflow Pipelines v2beta1 REST API, in memory; tested by
  ``test_kfp_standin.py``.
* ``http_standin``: the request handler frame and request log the two HTTP stand-ins share.
* ``mlflow_server``: not an emulator: a real ``mlflow server`` process that a test can stop and
  start again, kept here as test infrastructure.
"""
