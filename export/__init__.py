"""igrec export: trained model -> ONNX artefact, parity checks, and the onnxruntime Scorer."""
