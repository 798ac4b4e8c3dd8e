"""The model registry: versions of a model group, each with its ONNX, checkpoint and cards, and an
approval state. `registry.ModelRegistry` is the interface; `mlflow_registry` (on site) and
`sagemaker_registry` (AWS) implement it; `backends.open_registry` picks one from cloud.yaml."""
