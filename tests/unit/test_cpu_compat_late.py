"""The CPU seam covers modules imported after ``cpu_compat.install()``, and prepare() checks the
megatron-core version.

One fresh interpreter (this file run as a script) installs the redirections first and only then
imports Megatron's inference engine and modelopt's pruning plugin, which were not loaded yet. It
generates greedily with Megatron's ``StaticInferenceEngine`` (its controller builds
``torch.Generator(device=torch.cuda.current_device())``, text_generation_controller.py:75) and
compares the tokens with a no-cache greedy loop, and drops a layer with modelopt's
``drop_mcore_language_model_layers`` (``Tensor.cuda`` at mcore_minitron.py:145-146). It reports
JSON; the tests below check it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CONTROLLER = "megatron.core.inference.text_generation_controllers.text_generation_controller"
MINITRON = "modelopt.torch.prune.plugins.mcore_minitron"


def _tiny_gpt(num_layers: int):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    cfg = TransformerConfig(num_layers=num_layers, hidden_size=32, num_attention_heads=2,
                            use_cpu_initialization=True, hidden_dropout=0.0, attention_dropout=0.0)
    return GPTModel(cfg, get_gpt_layer_local_spec(), vocab_size=64, max_sequence_length=32).eval()


def _greedy_no_cache(model, prompt, n):
    import torch

    toks = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([toks]), torch.arange(len(toks)).unsqueeze(0), attention_mask=None)
            toks.append(int(logits[0, -1].argmax()))
    return toks[len(prompt):]


def _static_engine_generate(model, prompts, n):
    import torch
    from megatron.core.inference.contexts import StaticInferenceContext
    from megatron.core.inference.engines import StaticInferenceEngine
    from megatron.core.inference.inference_request import InferenceRequest
    from megatron.core.inference.model_inference_wrappers.gpt.gpt_inference_wrapper import GPTInferenceWrapper
    from megatron.core.inference.model_inference_wrappers.inference_wrapper_config import (
        InferenceWrapperConfig,
    )
    from megatron.core.inference.sampling_params import SamplingParams
    from megatron.core.inference.text_generation_controllers.text_generation_controller import (
        TextGenerationController,
    )

    class Tokenizer:  # the controller detokenizes what it generates
        eod = 0
        vocab_size = 64

        def detokenize(self, ids, **kwargs):
            return " ".join(map(str, ids))

    iwc = InferenceWrapperConfig(hidden_size=32, params_dtype=torch.float32,
                                 inference_batch_times_seqlen_threshold=-1, padded_vocab_size=64,
                                 inference_max_requests=len(prompts), inference_max_seq_length=32)
    wrapped = GPTInferenceWrapper(model, iwc, StaticInferenceContext(len(prompts), 32))
    controller = TextGenerationController(wrapped, Tokenizer())
    engine = StaticInferenceEngine(controller, max_batch_size=len(prompts), legacy=True)
    sp = SamplingParams(top_k=1, num_tokens_to_generate=n, termination_id=-1)
    reqs = [InferenceRequest(request_id=str(i), prompt=" ".join(map(str, p)), prompt_tokens=list(p),
                             sampling_params=sp) for i, p in enumerate(prompts)]
    out = engine.generate(inference_requests=reqs)
    return [list(map(int, r.generated_tokens)) for r in out], str(controller.sampling_rng.device)


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):  # a world of 1 on a free port
        os.environ.pop(k, None)
    import torch

    from nemo_reason.backend import cpu_compat
    from nemo_reason.backend import dist as bdist
    from nemo_reason.backend import prepare

    bdist.init_process_group()
    prepare("local")
    report = {"late": [m for m in (CONTROLLER, MINITRON) if m not in sys.modules]}

    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    parallel_state.initialize_model_parallel(1, 1)
    model_parallel_cuda_manual_seed(123)

    # Generation through Megatron's legacy static engine, imported after install().
    model = _tiny_gpt(2)
    prompts = [[5, 9, 3, 7], [11, 2, 8, 4]]
    generated, rng_device = _static_engine_generate(model, prompts, 5)
    report["engine"] = generated
    report["reference"] = [_greedy_no_cache(model, p, 5) for p in prompts]
    report["rng_device"] = rng_device
    ctl = sys.modules[CONTROLLER]
    report["controller_view"] = ctl.torch is cpu_compat.TORCH_VIEW
    report["controller_device"] = str(ctl.torch.cuda.current_device())

    # Depth pruning through modelopt's plugin, imported after install().
    from modelopt.torch.prune.plugins import mcore_minitron

    report["minitron_view"] = mcore_minitron.torch is cpu_compat.TORCH_VIEW
    model3 = _tiny_gpt(3)
    kept = [model3.decoder.layers[0].mlp.linear_fc1.weight, model3.decoder.layers[2].mlp.linear_fc1.weight]
    mcore_minitron.drop_mcore_language_model_layers(model3, layers_to_drop=[2])
    report["dropped"] = {
        "num_layers": model3.config.num_layers,
        "layer_numbers": [layer.layer_number for layer in model3.decoder.layers],
        "kept_weights": all(a is b.mlp.linear_fc1.weight for a, b in zip(kept, model3.decoder.layers)),
    }
    with torch.no_grad():
        logits = model3(torch.tensor([prompts[0]]), torch.arange(4).unsqueeze(0), attention_mask=None)
    report["dropped"]["logits_finite"] = bool(torch.isfinite(logits).all())

    # Outside Megatron/modelopt, .cuda() keeps torch's own error on a CPU machine.
    try:
        torch.zeros(1).cuda()
        report["cuda_outside"] = "no error"
    except (RuntimeError, AssertionError) as exc:
        report["cuda_outside"] = type(exc).__name__
    parallel_state.destroy_model_parallel()
    bdist.destroy_process_group()
    print("REPORT " + json.dumps(report))


@pytest.fixture(scope="module")
def report():
    import torch

    if torch.cuda.is_available():
        pytest.skip("cpu_compat is installed only without CUDA")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=300, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(lines[-1][len("REPORT "):])


def test_the_modules_were_imported_after_install(report):
    assert report["late"] == [CONTROLLER, MINITRON]


def test_megatron_static_engine_generates_on_cpu_like_a_no_cache_loop(report):
    assert report["controller_view"] and report["controller_device"] == "cpu"
    assert report["rng_device"] == "cpu"  # text_generation_controller.py:75
    assert report["engine"] == report["reference"]
    assert all(len(g) == 5 for g in report["engine"])


def test_modelopt_depth_pruning_runs_on_cpu(report):
    assert report["minitron_view"]
    assert report["dropped"] == {"num_layers": 2, "layer_numbers": [1, 2], "kept_weights": True,
                                 "logits_finite": True}


def test_cuda_calls_outside_megatron_are_not_redirected(report):
    assert report["cuda_outside"] != "no error"


@pytest.mark.parametrize("version", ["0.16.1", "0.16.2", "0.16.9rc1", "0.16.1+nv25.11"])
def test_supported_megatron_core_versions_pass(version):
    from nemo_reason.backend import check_megatron_core_version

    check_megatron_core_version(version)


@pytest.mark.parametrize("version", ["0.16.0", "0.16.1rc0", "0.17.0rc0", "0.17.0", "1.0.0", "not-a-version"])
def test_other_megatron_core_versions_are_refused_with_the_fix(version):
    from nemo_reason.backend import BackendError, check_megatron_core_version

    with pytest.raises(BackendError) as exc:
        check_megatron_core_version(version)
    msg = str(exc.value)
    assert f"megatron-core {version} is installed" in msg
    assert ">=0.16.1,<0.17" in msg
    assert "pip install 'megatron-core>=0.16.1,<0.17'" in msg


def test_the_installed_megatron_core_is_in_range():
    from nemo_reason.backend import check_megatron_core_version, installed_megatron_core_version

    check_megatron_core_version(installed_megatron_core_version())


if __name__ == "__main__":
    main()
