"""Export: a strategy's pruned network (weights from the template) as a TF
Serving SavedModel and as ONNX, with parity checks. CLI: ``stfusion-export``."""
