"""The paper's claims (study/claims.py) judged on a hand-made study result: signs, numbers, missing rows."""
import pytest

from hybrid_distill.study import StudyError, load_study
from hybrid_distill.study.claims import ClaimRoles, judge_claims, markdown


def row(**metrics) -> dict:
    """metric -> per-seed values (seeds 0, 1, 2) in study.json's shape."""
    return {m.replace("__", "/"): {"values": {str(s): v for s, v in enumerate(vs)}, "mean": sum(vs) / len(vs)}
            for m, vs in metrics.items()}


def layer_metrics(name: str, per_layer: list[list[float]]) -> dict:
    return {f"{name}__L{i}": vs for i, vs in enumerate(per_layer, 1)}


TEACHERS = {"sup": {"distance": [3.0, 3.0, 3.0, 4.0], "nmi": [0.1] * 4},
            "mae": {"distance": [3.0, 3.0, 6.0, 2.0], "nmi": [0.2] * 4}}
ROLES = ClaimRoles(relation_layers=[3], late_layers=[3, 4], masking={"random": "rand", "none": "none"},
                   decoder="dec", mask_recon="recon")


def result() -> dict:
    flat = [[3.0] * 3] * 2  # layers 1-2, equal everywhere
    return {"rows": {
        # Hybrid: L3 near MAE's 6 (5.0, 5.5, 6.0), L4 3.5 (sup 4: 0.5 away, MAE 2: 1.5 away)
        "hybrid": row(finetune__top1=[80, 81, 82], linear__top1=[70, 71, 72],
                      **layer_metrics("distance", flat + [[5.0, 5.5, 6.0], [3.5] * 3]),
                      **layer_metrics("nmi", flat + [[0.30, 0.32, 0.34], [0.1] * 3])),
        "distill_sup": row(finetune__top1=[79, 80, 81], linear__top1=[71, 72, 73],
                           **layer_metrics("distance", flat + [[3.0] * 3, [4.0, 4.1, 4.2]]),
                           **layer_metrics("nmi", flat + [[0.20, 0.20, 0.20], [0.1] * 3]),
                           **layer_metrics("spread", flat + [[0.2] * 3, [0.2] * 3])),
        "distill_mae": row(finetune__top1=[70, 70, 70], linear__top1=[60, 60, 60]),
        "rand": row(finetune__top1=[80, 80, 80], linear__top1=[70, 70, 70]),
        "none": row(finetune__top1=[81, 82, 83], linear__top1=[70, 70, 70]),
        "dec": row(linear__top1=[65, 66, 67], **layer_metrics("distance", flat + [[5.0] * 3, [5.0] * 3]),
                   **layer_metrics("spread", flat + [[0.5, 0.7, 0.9], [0.5] * 3])),
        "recon": row(**layer_metrics("distance", flat + [[3.0, 3.1, 2.9], [4.0, 4.2, 4.1]])),
    }}


def test_claims_follow_the_signs_of_hand_computed_paired_differences():
    a, b, c, d, e = judge_claims(result(), TEACHERS, ROLES)
    # (a) best single on both metrics is distill_sup: fine-tune +1 each seed, linear -1 each seed
    assert a.held is False
    assert "finetune/top1 hybrid - distill_sup (best single-teacher): +1.00" in a.lines[0]
    assert "linear/top1 hybrid - distill_sup (best single-teacher): -1.00" in a.lines[1]
    # (b) |DS - 6| - |H - 6| at L3 = 3 - (1, 0.5, 0) -> mean 2.5; at L4 |H - 2| - |H - 4| = 1.5 - 0.5 = 1
    assert b.held is True and "+2.50" in b.lines[0] and "+1.00" in b.lines[1]
    # (c) NMI at L3: (0.10, 0.12, 0.14) -> +0.1200 mean
    assert c.held is True and "+0.1200" in c.lines[0]
    # (d) vs random: fine-tune and linear (0, 1, 2) -> +1 (held); vs none: fine-tune -1 each seed -> not held
    assert d.held is False and sum("+1.00" in line for line in d.lines) == 3
    assert "finetune/top1 hybrid - none (none masking): -1.00" in d.lines[2]
    # (e) decoder: head spread at L3-4 (0.5, 0.6, 0.7) vs DS 0.2 -> +0.40 (more diverse, held); distance at
    #     L3-4 (5, 5) vs DS (3.5, 3.55, 3.6) -> +1.45 mean: up, the paper says down -> not held; linear -6
    #     (held); mask reconstruction: (3.5, 3.65, 3.5) - DS -> +0.0, +0.1, -0.1 (same)
    assert e.held is False and "+0.40" in e.lines[0] and "+1.45" in e.lines[1] and "-6.00" in e.lines[2]
    assert "+0.00" in e.lines[3] and "beyond noise" in e.lines[2] and "within noise" in e.lines[3]
    lower = result()
    lower["rows"]["dec"]["distance/L3"] = lower["rows"]["dec"]["distance/L4"] = row(d=[2.0] * 3)["d"]
    assert judge_claims(lower, TEACHERS, ROLES)[4].held is True
    lower["rows"]["dec"]["spread/L3"] = lower["rows"]["dec"]["spread/L4"] = row(d=[0.1] * 3)["d"]  # less diverse
    assert judge_claims(lower, TEACHERS, ROLES)[4].held is False
    text = "\n".join(markdown([a, b, c, d, e]))
    assert "(a) Hybrid's fine-tune" in text and "**not held**" in text and "**held**" in text


def test_a_claim_without_rows_to_judge_is_not_held_by_default():
    *_, d, e = judge_claims(result(), TEACHERS, ClaimRoles(relation_layers=[3], late_layers=[3, 4]))
    assert d.held is None and e.held is None and d.lines == [] and e.lines == []


def test_a_missing_row_leaves_its_claim_unjudged():
    partial = result()
    del partial["rows"]["dec"], partial["rows"]["recon"]
    *_, e = judge_claims(partial, TEACHERS, ROLES)
    assert e.held is None and "no seeds in common yet" in e.lines[0]


def test_a_claim_naming_a_missing_row_is_refused():
    spec = {"name": "x", "rows": {"hybrid": {}, "distill_sup": {}}, "teachers": {"sup": {}, "mae": {"kind": "mae"}},
            "claims": {"single": ["distill_sup", "nope"]}}
    with pytest.raises(StudyError, match="claims: row 'nope' is not a row"):
        load_study(spec)


def test_the_demo_quotes_the_study_headline_as_recorded(tmp_path):
    from omegaconf import OmegaConf

    from hybrid_distill.demo.replication import replication_lines
    from hybrid_distill.study.report import headline
    res = result()
    res["rows"]["hybrid"]["finetune/top1"].update(ci95=[78.0, 84.0], n=3)
    res["rows"] = {"hybrid": {"finetune/top1": res["rows"]["hybrid"]["finetune/top1"]}}
    res["provenance"] = {"git_sha": "abc1234", "device": "cpu", "cpu": "Some CPU"}
    res["claims"] = [{"name": "a", "text": "Hybrid >= best single", "held": False, "lines": []}]
    cells = [{"seconds": 1800.0}, {"seconds": 1800.0}]
    path = tmp_path / "replication.json"
    path.write_text(__import__("json").dumps(headline(OmegaConf.create({"name": "s196"}), res, cells, 27)))
    text = "\n".join(replication_lines(path))
    assert "study s196" in text and "git abc1234, Some CPU, 2 of 27 cells, 1.0 h" in text
    assert "| hybrid | 81.00 [78.00, 84.00] |  |  |" in text and "- (a) Hybrid >= best single: not held" in text
    assert "No replication is recorded" in replication_lines(tmp_path / "absent.json")[0]
