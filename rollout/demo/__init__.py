"""`rollout demo` and the tooling it shares with the tests and benches: the demo's
models, an MLflow server for `--registry mlflow`, and the one traffic generator."""
