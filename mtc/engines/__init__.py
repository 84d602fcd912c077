"""Engines: turn a checked ONNX into what a backend executes, ahead of run time.

- profiles.py: resolution profiles and every input's shape derived from the manifest;
- plan.py: TensorRT plan sidecars, cache keys and staleness checks (no TensorRT needed);
- tensorrt.py: the strongly typed TensorRT builder (Polygraphy loaders), lazily imported;
- openvino.py / onnxruntime.py: precompiled OpenVINO models, ORT's optimized model;
- graph.py: freezing inputs (RVM's downsample ratio) and folding what they feed;
- build.py: `mtc build`.
"""
