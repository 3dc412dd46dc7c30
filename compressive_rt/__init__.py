"""compressive-rt: the Compressive Transformer reference, its ONNX/TensorRT export and a lean
runtime.

Every installed import name lives under this one package so that none clashes with another
distribution's generic top-level name (`runtime`, `export`, `benchmarks`). The source folders stay
at the repository's top level and are mapped here by setuptools' `package-dir` (pyproject.toml):

    compressive_rt.ct_reference  <- ct_reference/   the PyTorch model (torch, numpy)
    compressive_rt.export        <- export/         checkpoint -> ONNX graphs, TensorRT plans
    compressive_rt.runtime       <- runtime/        the torch-free loop and its backends
    compressive_rt.serving       <- serving/        `ctrt serve`: HTTP API, engine thread, stores
    compressive_rt.cli           <- cli/            the `ctrt` command, the only cross-layer code
    compressive_rt.benchmarks    <- benchmarks/     side-by-side measurements

`compressive_rt.errors` (this folder) is the one error root that every layer imports, and
`compressive_rt.progress` the progress bars every layer may use. docs/DESIGN.md has the layout.
"""
