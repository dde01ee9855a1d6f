"""Data phases and blends as configured: the share -> step boundary arithmetic, the dataset view that
switches at the boundary, and the config errors a user meets before any work starts."""

import pytest

from nemo_reason.config.schema import ConfigError
from nemo_reason.config.store import compose
from nemo_reason.data.phases import (PhasedDataset, PhaseError, eval_slots, phase_at, phase_boundaries,
                                     plan_phases, switch_message)


@pytest.mark.parametrize("shares,steps,bounds", [
    ([0.6, 0.4], 200, [0, 120, 200]),          # exact: 0.6 x 200 is 120, not 120.00000000000001
    ([0.6, 0.4], 6, [0, 4, 6]),                # 3.6 rounds to 4
    ([0.5, 0.5], 7, [0, 4, 7]),                # 3.5: halves round up
    ([0.25, 0.5, 0.25], 10, [0, 3, 8, 10]),    # cumulative 2.5 -> 3, 7.5 -> 8 (not 3 + 5 + 3 = 11)
    ([1 / 3, 1 / 3, 1 / 3], 10, [0, 3, 7, 10]),
    ([0.1, 0.9], 1000, [0, 100, 1000]),
    ([1.0], 5, [0, 5]),
])
def test_boundaries_round_the_cumulative_share_to_whole_steps(shares, steps, bounds):
    assert phase_boundaries(shares, steps) == bounds


def test_boundaries_stay_within_half_a_step_of_the_exact_token_share():
    shares = [0.37, 0.21, 0.42]
    for steps in range(3, 400):
        b = phase_boundaries(shares, steps)
        cum = 0.0
        for k, s in enumerate(shares):
            cum += s
            assert abs(b[k + 1] - cum * steps) <= 0.5 + 1e-9, (steps, b)


def test_shares_that_do_not_sum_to_one_are_named():
    with pytest.raises(PhaseError, match=r"sum to 0.9 \(broad 0.6 \+ hq 0.3\)"):
        phase_boundaries([0.6, 0.3], 100, ["broad", "hq"])
    with pytest.raises(PhaseError, match="positive"):
        phase_boundaries([1.2, -0.2], 100)


def test_a_phase_without_a_step_is_an_error():
    with pytest.raises(PhaseError, match=r"phase 'b' \(share 0.01\) gets no step of trainer.max_steps=20"):
        phase_boundaries([0.99, 0.01], 20, ["a", "b"])


def test_phase_at_and_the_switch_message():
    spans = plan_phases(["broad", "hq"], [0.6, 0.4], 200)
    assert [(s.start_step, s.end_step) for s in spans] == [(0, 120), (120, 200)]
    assert phase_at(spans, 0).name == "broad" and phase_at(spans, 119).name == "broad"
    assert phase_at(spans, 120).name == "hq" and phase_at(spans, 199).name == "hq"
    assert switch_message(spans, 119, 2048) is None
    msg = switch_message(spans, 120, 16 * 128)
    assert "phase 1 (broad) -> 2 (hq) at step 120 (tokens 245,760)" in msg and "steps 121-200" in msg


def test_eval_slots_follow_the_phase_of_the_step_evaluated():
    spans = plan_phases(["a", "b"], [0.6, 0.4], 200)
    # Evaluations after steps 50, 100 (phase a: steps 1-120), 150, 200 (phase b).
    assert [eval_slots(s, 50) for s in spans] == [(0, 2), (2, 4)]
    assert [eval_slots(s, 120) for s in spans] == [(0, 1), (1, 1)]  # step 120 is a's last step
    assert eval_slots(spans[0], 0) == (0, 0)


def test_phased_dataset_lays_phases_end_to_end():
    a, b = [f"a{i}" for i in range(10)], [f"b{i}" for i in range(7)]
    ds = PhasedDataset([(a, 8), (b, 6)])  # datasets may be longer than their segment
    assert len(ds) == 14
    assert [ds[i] for i in range(14)] == a[:8] + b[:6]
    assert ds.locate(8) == (1, 0)
    with pytest.raises(IndexError):
        ds[14]
    with pytest.raises(ValueError, match="fewer than the 8"):
        PhasedDataset([(a[:5], 8)])


PHASES = ("data.phases=[{name:broad,share:0.6,blend:[{weight:0.7,path:synthetic},{weight:0.3,path:'synthetic:7'}]},"
          "{name:hq,share:0.4,blend:[{weight:1,path:'synthetic:7'}]}]")


def test_phases_compose_from_the_command_line():
    d = compose("tiny", [PHASES]).data
    assert [(p.name, p.share) for p in d.phases] == [("broad", 0.6), ("hq", 0.4)]
    assert [(e.weight, e.path) for e in d.phases[0].blend] == [(0.7, "synthetic"), (0.3, "synthetic:7")]
    # A recipe's phases can be replaced by a single blend.
    d = compose("tiny", ["data.phases=[]", "data.blend=[{weight:1,path:synthetic}]"]).data
    assert [p.name for p in d.train_phases()] == ["main"]


def test_tiny_recipes_train_in_two_phases():
    for recipe in ("tiny", "tiny_hybrid"):
        d = compose(recipe).data
        assert [p.name for p in d.phases] == ["broad", "high_quality"]
        assert [p.share for p in d.phases] == [0.6, 0.4]


@pytest.mark.parametrize("overrides,needle", [
    (["data.phases=[{name:a,share:0.6,blend:[{weight:1,path:synthetic}]},{name:b,share:0.3,blend:[{weight:1,path:synthetic}]}]"],
     "sum to 0.9 (a 0.6 + b 0.3)"),
    (["data.blend=[{weight:1,path:synthetic}]"], "data.blend and data.phases are both set"),
    (["data.phases=[]", "data.blend=[{weight:0,path:synthetic}]"], "data.blend[0].weight=0.0: weights must be > 0"),
    (["data.phases=[]", "data.blend=[{weight:1,path:/no/such/prefix}]"], "/no/such/prefix.bin/.idx not found"),
    (["data.phases=[]", "data.blend=[{weight:1,path:'bundled:no_such_corpus'}]"], "no bundled corpus 'no_such_corpus' (have: code, math"),
    (["data.phases=[]", "data.blend=[{weight:1,path:synthetic},{weight:1,path:synthetic}]"], "listed twice"),
    (["data.phases=[{name:a,share:1,blend:[]}]"], "data.phases[0].blend is empty"),
    (["data.phases=[{name:a,share:0.5,blend:[{weight:1,path:synthetic}]},{name:a,share:0.5,blend:[{weight:1,path:synthetic}]}]"],
     "names repeat"),
    (["trainer.max_steps=10", "data.phases=[{name:a,share:0.97,blend:[{weight:1,path:synthetic}]},"
      "{name:b,share:0.03,blend:[{weight:1,path:synthetic}]}]"], "phase 'b' (share 0.03) gets no step"),
    (["data.valid_blend=[{weight:1,path:/no/valid}]"], "data.valid_blend[0].path=/no/valid"),
    (["data.blend=[{wieght:1,path:synthetic}]"], "data.blend: 'wieght' is not a field of BlendEntry (fields: weight, path)"),
])
def test_blend_and_phase_errors_name_the_field_and_the_fix(overrides, needle):
    from nemo_reason.preflight import preflight

    with pytest.raises(ConfigError) as e:
        preflight(compose("tiny", overrides))  # missing files and bad sources: the preflight's
    assert needle in str(e.value)


def test_an_existing_prefix_is_accepted(tmp_path):
    prefix = tmp_path / "web_text_document"
    for ext in (".bin", ".idx"):
        (tmp_path / f"web_text_document{ext}").write_bytes(b"")
    d = compose("tiny", ["data.phases=[]", f"data.blend=[{{weight:2,path:{prefix}}},{{weight:1,path:synthetic}}]"]).data
    assert d.blend[0].path == str(prefix)


def test_containers_mount_every_blend_folder(tmp_path):
    from nemo_reason.launch.job import LaunchRequest, mounts

    for name in ("web/web_text_document", "code/code_text_document"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        for ext in (".bin", ".idx"):
            (tmp_path / f"{name}{ext}").write_bytes(b"")
    overrides = ["launcher=docker", "launcher.gpus_per_node=0",
                 f"data.phases=[{{name:a,share:0.5,blend:[{{weight:1,path:{tmp_path}/web/web_text_document}},"
                 f"{{weight:1,path:'bundled:math'}}]}},{{name:b,share:0.5,blend:[{{weight:1,path:{tmp_path}/code/code_text_document}}]}}]"]
    cfg = compose("tiny", overrides)
    got = mounts(LaunchRequest.create("tiny", overrides, cfg, tmp_path / "work"))
    assert f"{tmp_path}/web:{tmp_path}/web:ro" in got and f"{tmp_path}/code:{tmp_path}/code:ro" in got
