"""`ctrt import-checkpoint`: a checkpoint of another implementation -> a checkpoint here."""

from __future__ import annotations

import argparse

SOURCES = ("compressive-transformer-pytorch",)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-checkpoint", help="convert a compressive-transformer-pytorch state_dict into a "
                                  "checkpoint directory",
        description="Read STATE_DICT (a .pt file of model.state_dict(), loaded with "
                    "weights_only=True) and ARGS.json (the keyword arguments its "
                    "CompressiveTransformer was built with), map every argument onto this "
                    "project's config (or refuse it by name), check every weight's name and "
                    "shape, and write OUT_CHECKPOINT (model.safetensors + config.json), ready "
                    "for `ctrt export`.")
    parser.add_argument("--from", dest="source", required=True, choices=SOURCES,
                        help="the implementation that wrote the state_dict")
    parser.add_argument("state_dict", metavar="STATE_DICT", help=".pt state_dict file")
    parser.add_argument("--config", required=True, metavar="ARGS.json",
                        help="JSON object of the model's constructor arguments")
    parser.add_argument("out", metavar="OUT_CHECKPOINT", help="checkpoint directory to write")
    parser.set_defaults(handler=run_import)


def run_import(args: argparse.Namespace) -> int:
    from compressive_rt.ct_reference.checkpoint import load_config
    from compressive_rt.ct_reference.importers import import_checkpoint

    out = import_checkpoint(args.source, args.state_dict, args.config, args.out)
    config = load_config(out)
    print(f"wrote {out} ({config.n_layers} layers, d_model {config.d_model}, seg_len "
          f"{config.seg_len}, mem_len {config.mem_len}, cmem_len {config.cmem_len}); next: "
          f"ctrt export {out} ENGINE_DIR")
    return 0
