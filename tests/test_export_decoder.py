"""The auto-encoding decoder g trains f_c only: exported graphs never contain it."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from support.engines import random_model, tiny_config

from compressive_rt.ct_reference.model import CompressiveTransformer
from compressive_rt.export.pipeline import export_model


def graphs(engine_dir):
    """{graph file name: (graph inputs [(name, dims)], initializers {name: array})}"""
    found = {}
    for path in sorted(engine_dir.glob("*.onnx")):
        graph = onnx.load(str(path)).graph
        inputs = [(v.name, [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim])
                  for v in graph.input]
        found[path.name] = (inputs, {i.name: numpy_helper.to_array(i) for i in graph.initializer})
    return found


@pytest.mark.slow
def test_autoencoding_model_exports_the_same_graphs_without_its_decoder(tmp_path):
    with_decoder = random_model(tiny_config("dilated_conv", aux_loss="autoencoding"))
    without = CompressiveTransformer(with_decoder.config.replace(aux_loss="attention")).eval()
    without.load_state_dict({name: t for name, t in with_decoder.state_dict().items()
                             if not name.startswith("ae_decoders.")})
    export_model(with_decoder, tmp_path / "ae", verify_segments=6, log=lambda *_: None)
    export_model(without, tmp_path / "plain", verify_segments=6, log=lambda *_: None)
    exported, reference = graphs(tmp_path / "ae"), graphs(tmp_path / "plain")
    assert exported and set(exported) == set(reference)
    decoder_weights = [p.detach().numpy() for p in with_decoder.ae_decoders.parameters()]
    for name, (inputs, initializers) in exported.items():
        assert inputs == reference[name][0], name
        assert sorted(a.size for a in initializers.values()) == \
            sorted(a.size for a in reference[name][1].values()), name
        assert not any("ae_decoders" in init for init in initializers), name
        assert not any(array.shape == weight.shape and np.array_equal(array, weight)
                       for array in initializers.values() for weight in decoder_weights), name
