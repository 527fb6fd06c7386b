"""The paper's claims (study/claims.py) judged on made-up intervals and a hand-made study result."""

import json

import pytest

from hybrid_distill.study import StudyError, load_study
from hybrid_distill.study.claims import VERDICTS, ClaimRoles, judge_claims, markdown, verdict


def made_up(mean: float, lo: float, hi: float, direction: str = "+", margin: float | None = None) -> dict:
    return {"name": "x", "mean": mean, "lo": lo, "hi": hi, "direction": direction, "margin": margin, "seeds": []}


@pytest.mark.parametrize(
    "parts, expected",
    [
        ([made_up(+0.12, -0.10, +0.34)], "within noise"),  # the mean has the claimed sign, the interval holds 0
        ([made_up(-0.12, -0.34, +0.10, "-")], "within noise"),
        ([made_up(+0.53, +0.40, +0.65)], "held"),
        ([made_up(+0.53, +0.40, +0.65), made_up(+0.05, -1.42, +1.53)], "within noise"),  # every part must hold
        ([made_up(+0.53, +0.40, +0.65), made_up(-10.2, -12.2, -8.3)], "not held"),  # one against is enough
        ([made_up(-13.6, -16.7, -10.5, "-")], "held"),
        ([made_up(+0.16, -0.20, +0.45, "=", 0.5)], "held"),  # within +-margin
        ([made_up(+0.16, -0.20, +0.70, "=", 0.5)], "within noise"),  # reaches past the margin
        ([made_up(+0.90, +0.60, +1.20, "=", 0.5)], "not held"),  # wholly outside it
        ([made_up(+1.0, None, None)], "not testable"),  # one seed: no interval
        ([], "not testable"),
    ],
)
def test_made_up_intervals_get_the_verdict_the_rules_say(parts, expected):
    got, why = verdict(parts)
    assert got == expected and got in VERDICTS and why


def test_a_mean_of_the_claimed_sign_whose_interval_holds_zero_is_never_held():
    for mean in (0.01, 0.5, 3.0):
        for width in (0.02, 1.0, 10.0):
            for direction, sign in (("+", 1), ("-", -1)):
                lo, hi = sorted((sign * mean - width, sign * mean + width))
                if lo <= 0 <= hi:
                    assert verdict([made_up(sign * mean, lo, hi, direction)])[0] != "held"


def row(**metrics) -> dict:
    """metric -> per-seed values (seeds 0, 1, 2) in study.json's shape."""
    return {
        m.replace("__", "/"): {"values": {str(s): v for s, v in enumerate(vs)}, "mean": sum(vs) / len(vs), "ci95": None}
        for m, vs in metrics.items()
    }


def layer_metrics(name: str, per_layer: list[list[float]]) -> dict:
    return {f"{name}__L{i}": vs for i, vs in enumerate(per_layer, 1)}


def teachers(mae_l3_heads=(2.5, 9.5), mae_nmi=0.2) -> dict:
    """Uniform attention at 5 px; the MAE teacher's L3 heads: one local (0.5 x uniform), one long-range."""
    flat = [[3.0, 3.0]] * 4
    return {
        "sup": {"distance": [3.0, 3.0, 3.0, 4.0], "nmi": [0.1] * 4, "per_head": flat, "uniform": 5.0},
        "mae": {
            "distance": [3.0, 3.0, sum(mae_l3_heads) / 2, 2.0],
            "nmi": [mae_nmi] * 4,
            "per_head": [[3.0, 3.0], [3.0, 3.0], list(mae_l3_heads), [2.0, 2.0]],
            "uniform": 5.0,
        },
    }


ROLES = ClaimRoles(
    relation_layers=[3],
    late_layers=[3, 4],
    masking={"random": "rand", "none": "none"},
    decoder="dec",
    mask_recon="recon",
    margin_px=0.5,
)


def result() -> dict:
    flat = [[3.0] * 3] * 2  # layers 1-2, equal everywhere
    res = {
        "rows": {
            # Hybrid: L3 near MAE's 6 (5.0, 5.5, 6.0), L4 3.5 (sup 4: 0.5 away, MAE 2: 1.5 away)
            "hybrid": row(
                finetune__top1=[80, 81, 82],
                linear__top1=[70, 71, 72],
                **layer_metrics("distance", flat + [[5.0, 5.5, 6.0], [3.5] * 3]),
                **layer_metrics("nmi", flat + [[0.30, 0.32, 0.34], [0.1] * 3]),
            ),
            "distill_sup": row(
                finetune__top1=[79, 80, 81],
                linear__top1=[71, 72, 73],
                **layer_metrics("distance", flat + [[3.0] * 3, [4.0, 4.1, 4.2]]),
                **layer_metrics("nmi", flat + [[0.20, 0.20, 0.20], [0.1] * 3]),
                **layer_metrics("spread", flat + [[0.2] * 3, [0.2] * 3]),
            ),
            "distill_mae": row(finetune__top1=[70, 70, 70], linear__top1=[60, 60, 60]),
            "rand": row(finetune__top1=[80, 80, 80], linear__top1=[70, 70, 70]),
            "none": row(finetune__top1=[81, 82, 83], linear__top1=[70, 70, 70]),
            "dec": row(
                linear__top1=[65, 66, 67],
                **layer_metrics("distance", flat + [[5.0] * 3, [5.0] * 3]),
                **layer_metrics("spread", flat + [[0.5, 0.7, 0.9], [0.5] * 3]),
            ),
            "recon": row(**layer_metrics("distance", flat + [[3.0, 3.1, 2.9], [4.0, 4.2, 4.1]])),
        }
    }
    res["rows"]["hybrid"]["distance/L3"]["ci95"] = [4.26, 6.74]  # 5.5 +- 4.303 * 0.5 / sqrt(3)
    return res


def by_name(claims) -> dict:
    return {c.name: c for c in claims}


def test_claims_follow_hand_computed_paired_intervals():
    c = by_name(judge_claims(result(), teachers(), ROLES))
    # (a) best single is distill_sup: fine-tune +1 on every seed (interval [1, 1]), linear -1 on every seed
    assert c["a"].verdict == "not held" and c["a"].why.startswith("linear/top1 hybrid - distill_sup")
    assert [p["mean"] for p in c["a"].parts] == pytest.approx([1.0, -1.0])
    # (b) |DS - 6| - |H - 6| at L3 = (2, 2.5, 3): 2.5 +- 4.303 * 0.5 / sqrt(3); at L4 |H - 2| - |H - 4| = 1 each
    assert c["b"].verdict == "held"
    assert c["b"].parts[0]["mean"] == pytest.approx(2.5) and c["b"].parts[0]["lo"] == pytest.approx(2.5 - 1.2422, 1e-3)
    assert c["b"].parts[-1]["lo"] == pytest.approx(1.0) == c["b"].parts[-1]["hi"]
    # (c) NMI at L3: (0.10, 0.12, 0.14): 0.12 +- 4.303 * 0.02 / sqrt(3)
    assert c["c"].verdict == "held" and c["c"].parts[0]["lo"] == pytest.approx(0.12 - 0.04969, 1e-3)
    # (d) vs random (0, 1, 2): within noise; vs none: fine-tune -1 on every seed, inside the +-1 margin
    assert c["d"].verdict == "within noise" and [p["direction"] for p in c["d"].parts] == ["+", "+", "=", "="]
    assert [p["lo"] < 0 < p["hi"] for p in c["d"].parts[:2]] == [True, True] and c["d"].parts[2]["lo"] == -1.0
    far = result()
    far["rows"]["none"]["finetune/top1"] = row(x=[84, 85, 86])["x"]  # 4 points above Hybrid: not "very close"
    d = by_name(judge_claims(far, teachers(), ROLES))["d"]
    assert d.verdict == "not held" and d.why.startswith("finetune/top1 hybrid - none (none masking): -4")
    # (e) the decoder's distance rises (+1.45) where the paper says it falls: not held
    assert c["e"].verdict == "not held" and c["e"].why.startswith("distance dec - distill_sup")
    assert [p["direction"] for p in c["e"].parts] == ["+", "-", "-", "="]
    assert c["e"].parts[3]["margin"] == 0.5 and -0.5 <= c["e"].parts[3]["lo"]


def test_the_last_layer_part_depends_on_hybrid_beyond_both_teachers():
    """|H - M| - |H - S| is the teachers' gap in every seed once H lies past both (a zero-width interval that
    says nothing of H): the part measures H past the teachers' midpoint instead (MIM 2, sup 4 at L4)."""
    res = result()
    res["rows"]["hybrid"].update(row(**layer_metrics("distance", [[3.0] * 3] * 3 + [[5.0, 6.0, 7.0]])))
    last = by_name(judge_claims(res, teachers(), ROLES))["b"].parts[-1]
    assert last["mean"] == pytest.approx(2 * 6.0 - 2.0 - 4.0) and last["lo"] < 6.0 < last["hi"]
    assert last["lo"] == pytest.approx(6.0 - 4.303 * 2.0 / 3**0.5, 1e-3)  # 2H - 6 = (4, 6, 8): s = 2
    res["rows"]["hybrid"].update(row(**layer_metrics("distance", [[3.0] * 3] * 3 + [[1.0, 1.5, 0.5]])))  # past MIM's
    assert by_name(judge_claims(res, teachers(), ROLES))["b"].parts[-1]["mean"] == pytest.approx(2 * 1.0 - 6.0)


def test_head_by_head_gaps_pair_each_student_head_with_the_teachers_same_head():
    res = result()
    heads = {
        "hybrid": [[2.0, 9.0], [3.0, 8.0], [2.5, 9.5]],
        "distill_sup": [[6.0, 6.0], [5.0, 7.0], [6.0, 6.5]],
        "hybrid_alpha0": [[5.0, 7.0]] * 3,
    }  # per seed, the two heads of L3; the teacher's: 2.5 and 9.5
    for name, per_seed in heads.items():
        res["rows"].setdefault(name, {}).update(
            row(**{f"head_distance__L3__H{h}": [s[h] for s in per_seed] for h in (0, 1)})
        )
    res["rows"]["hybrid_alpha0"].update(row(distance__L3=[6.0] * 3, distance__L4=[3.5] * 3))
    roles = ClaimRoles(**{**ROLES.__dict__, "relation_control": "hybrid_alpha0", "mim_note": "controlled"})
    b = by_name(judge_claims(res, teachers(), roles))["b"]
    head = [p for p in b.parts if "head by head" in p["name"]]
    # distill_sup: mean |h - t| per seed (3.5+3.5)/2, (2.5+2.5)/2, (3.5+3)/2 = 3.5, 2.5, 3.25; hybrid: 0.5, 1, 0
    assert head[0]["name"].startswith("|distill_sup_h - MIM_h|")
    assert head[0]["mean"] == pytest.approx(((3.5 - 0.5) + (2.5 - 1.0) + (3.25 - 0.0)) / 3)
    # hybrid_alpha0: (2.5 + 2.5) / 2 = 2.5 on every seed
    assert head[1]["name"].startswith("|hybrid_alpha0_h - MIM_h|")
    assert head[1]["mean"] == pytest.approx(((2.5 - 0.5) + (2.5 - 1.0) + (2.5 - 0.0)) / 3)
    assert "(controlled) than distill_sup and hybrid_alpha0" in b.text and len(b.parts) == 5


def test_preconditions_make_claims_not_testable_with_the_numbers_named():
    b = by_name(judge_claims(result(), teachers(mae_l3_heads=(5.5, 6.5)), ROLES))["b"]
    assert b.verdict == "not testable" and "no local head in L3" in b.why and "1.10 x" in b.why
    close = teachers(mae_l3_heads=(2.5, 4.5))  # a local head, but the layer means 3.5 vs 3.0: within noise
    b = by_name(judge_claims(result(), close, ROLES))["b"]
    assert b.verdict == "not testable" and "differ by 0.50 px, within the students' seed noise (1.24 px" in b.why
    c = by_name(judge_claims(result(), teachers(mae_nmi=0.05), ROLES))["c"]
    assert c.verdict == "not testable" and "(0.0500) does not exceed the supervised teacher's (0.1000)" in c.why


def test_a_claim_without_its_rows_is_not_testable_and_judge_picks_the_claims():
    partial = result()
    del partial["rows"]["dec"], partial["rows"]["recon"]
    e = by_name(judge_claims(partial, teachers(), ROLES))["e"]
    assert e.verdict == "not testable" and "no 95% interval yet" in e.why
    only_b = ClaimRoles(**{**ROLES.__dict__, "judge": ["b"]})
    assert [c.name for c in judge_claims(result(), teachers(), only_b)] == ["b"]
    with pytest.raises(ValueError, match="unknown claim 'z'"):
        judge_claims(result(), teachers(), ClaimRoles(judge=["z"]))


def test_markdown_states_every_verdict_and_escapes_pipes():
    claims = [c.__dict__ for c in judge_claims(result(), teachers(), ROLES)]
    text = "\n".join(markdown(claims, "before any cell ran"))
    table = [line for line in text.splitlines() if line.startswith("| (")]
    assert len(table) == 5 and all(line.count(" | ") == 2 for line in table)  # pipes in the texts escaped
    assert "| **held** |" in text and "| **not held** |" in text and "fixed before any cell ran" in text


def test_a_claim_naming_a_missing_row_is_refused():
    spec = {
        "name": "x",
        "rows": {"hybrid": {}, "distill_sup": {}},
        "teachers": {"sup": {}, "mae": {"kind": "mae"}},
        "claims": {"single": ["distill_sup", "nope"]},
    }
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
    res["claims"] = [
        {
            "name": "a",
            "text": "Hybrid above best single",
            "verdict": "within noise",
            "why": "x: +1 [-1, +3] does not exclude 0",
            "parts": [],
        }
    ]
    cells = [{"seconds": 1800.0}, {"seconds": 1800.0}]
    path = tmp_path / "replication.json"
    path.write_text(json.dumps(headline(OmegaConf.create({"name": "s196"}), res, cells, 27)))
    text = "\n".join(replication_lines(path))
    assert "study s196" in text and "git abc1234, Some CPU, 2 of 27 cells, 1.0 h" in text
    assert "| hybrid | 81.00 [78.00, 84.00] |  |  |" in text
    assert "- (a) Hybrid above best single: **within noise** (x: +1 [-1, +3] does not exclude 0)" in text
    assert "No replication is recorded" in replication_lines(tmp_path / "absent.json")[0]
