"""The SFT forward step on real SFT samples: a packed row of several conversations reports the same
assistant-token loss sum and count as the conversations run one by one, unpacked (fp32), dense and
hybrid; and the step's rules refuse what packing cannot hold."""

from __future__ import annotations

import pytest
import torch

from tests.unit.megatron_env import megatron_single  # noqa: F401


def _model(recipe, vocab, *overrides):
    from nemo_reason.config.store import compose
    from nemo_reason.models import build_model

    torch.manual_seed(0)
    cfg = compose(recipe, list(overrides))
    return build_model(cfg, vocab)[0].eval()


def _report(model, sample):
    from nemo_reason.data.loader import _collate
    from nemo_reason.training.losses import sft_forward_step

    out, loss_func = sft_forward_step(iter([_collate([sample])]), model)
    _, report = loss_func(out)
    return report["lm loss"].double()


@pytest.mark.parametrize("recipe,overrides", [("tiny", ()), ("tiny_hybrid", ("model.mamba_chunk_size=8",))])
def test_packed_sft_loss_equals_the_conversations_one_by_one(megatron_single, recipe, overrides):  # noqa: F811
    from nemo_reason.data.sft import SFTDataset, build_sft_dataset
    from nemo_reason.data.tokenizer import build_tokenizer

    tok = build_tokenizer("bundled")
    packed = build_sft_dataset(["bundled:math:12"], tok, 384, packed=True, seed=3)
    alone = SFTDataset(packed.documents, 384, packed=False, seed=0)  # same documents, one per sample
    index = {id(d): i for i, d in enumerate(alone.documents)}
    row = max(range(len(packed)), key=lambda i: len(packed.sample_documents[i]))
    docs = packed.sample_documents[row]
    assert len(docs) >= 2, "the test needs a row holding several conversations"
    model = _model(recipe, tok.vocab_size, *overrides)
    with torch.no_grad():
        got = _report(model, packed[row])
        want = sum(_report(model, alone[index[id(packed.documents[d])]]) for d in docs)
    assert got[1] == want[1] and got[1] > 0  # the same assistant tokens
    assert abs(got[0] - want[0]) <= 1e-5 * abs(want[0]), (got, want)


def test_packed_micro_batch_of_two_rows_is_refused(megatron_single):  # noqa: F811
    from nemo_reason.data.loader import _collate
    from nemo_reason.data.sft import build_sft_dataset
    from nemo_reason.data.tokenizer import build_tokenizer
    from nemo_reason.training.losses import sft_forward_step

    tok = build_tokenizer("bundled")
    data = build_sft_dataset(["bundled:math:12"], tok, 384, packed=True)
    model = _model("tiny", tok.vocab_size)
    with pytest.raises(ValueError, match="micro_batch_size=1"):
        sft_forward_step(iter([_collate([data[0], data[1]])]), model)
