"""The paper's claims judged on a study's finished cells: each verdict is data, written once.

A claim is a list of parts, each a paired difference over seeds (stats.paired) with its 95% interval and
the direction the claim predicts: `+` (above 0), `-` (below 0) or `=` (within +-margin of 0, for the
paper's "close to" claims). The rules, fixed before the numbers they judge (STYLE.md 22):

  not testable  a precondition fails, computed from the data and named in `why`; or a part has no interval
                yet (missing rows, a single seed)
  not held      some part's interval excludes 0 against the claim (for `=`: lies wholly outside +-margin)
  held          every part's interval excludes 0 in the claimed direction (for `=`: lies within +-margin)
  within noise  otherwise

A mean with the claimed sign whose interval contains 0 is never `held`. Claims (paper section 4 / Fig. 5
and section 2):
  (a) Hybrid's top-1 above the best single-teacher student's (Table 1), under the study's protocols;
  (b) in the relation-distilled layers Hybrid's attention distance is closer to the MIM teacher's than
      Distill-Sup's is (layer means, Fig. 5a, and head by head where cells record heads), and in the last
      layer closer to the supervised teacher's than to the MIM teacher's (past their midpoint: v2 of this
      part, see last_layer_part; v1 was |H - MIM| - |H - sup|). Testable only when the MIM
      teacher has a local head there (<= `local` x uniform) and the teachers differ by more than the
      students' seed noise;
  (c) NMI of Hybrid's relation layers above Distill-Sup's (Fig. 5b); testable only when the MIM teacher's
      NMI there exceeds the supervised teacher's (the premise that it brings diversity);
  (d) progressive masking above random masking and within +-margin_top1 of no masking at equal epochs
      (Table 8: "very close performance ... to the no masking results and outperforms random masking");
  (e) a decoder raises the spread of the encoder's late heads, lowers their distance and the linear top-1
      (sections 2.2, 2.3); mask feature reconstruction keeps late-layer distance within +-margin of direct
      distillation (2.4).
"""

from dataclasses import dataclass, field

from .stats import paired

VERDICTS = ("held", "not held", "within noise", "not testable")


@dataclass
class ClaimRoles:
    """Which rows and teachers play which part, and the judging protocol; layers are 1-indexed."""

    judge: list[str] = field(default_factory=lambda: ["a", "b", "c", "d", "e"])  # the claims this study judges
    metrics: list[str] = field(default_factory=lambda: ["finetune/top1", "linear/top1"])  # judge (a) and (d)
    margin_px: float = 0.5  # equivalence margin (px) of the "close to" part of (e)
    margin_top1: float = 1.0  # equivalence margin (top-1 points) of (d)'s "very close to no masking" (Table 8)
    local: float = 0.6  # a local head: distance <= local x the uniform-attention distance
    registered: str = ""  # when these rules and protocols were fixed, relative to the results (shown in study.md)
    hybrid: str = "hybrid"
    single: list[str] = field(default_factory=lambda: ["distill_sup", "distill_mae"])
    sup_student: str = "distill_sup"
    sup_teacher: str = "sup"
    mae_teacher: str = "mae"
    relation_layers: list[int] = field(default_factory=list)  # the student layers matching the MIM relations
    relation_control: str | None = None  # (b): also against this row (Hybrid without the relation loss)
    mim_note: str = ""  # (b)'s text says what the MIM teacher is, e.g. "controlled: local by construction"
    masking: dict[str, str] = field(default_factory=dict)  # {random: row, none: row}
    decoder: str | None = None
    mask_recon: str | None = None
    late_layers: list[int] = field(default_factory=list)  # (e): the encoder's late layers


@dataclass
class Claim:
    name: str
    text: str
    verdict: str  # one of VERDICTS
    why: str  # one sentence
    parts: list[dict]  # {name, mean, lo, hi, direction, margin, seeds}


def part(name: str, diff: dict | None, direction: str, margin: float | None = None) -> dict:
    lo, hi = diff["ci95"] if diff and diff["ci95"] else (None, None)
    return {
        "name": name,
        "mean": diff["mean"] if diff else None,
        "lo": lo,
        "hi": hi,
        "direction": direction,
        "margin": margin,
        "seeds": diff["seeds"] if diff else [],
    }


def part_state(p: dict) -> str:
    """'missing', 'for', 'against' or 'noise' under the rules above."""
    if p["lo"] is None:
        return "missing"
    lo, hi, m = p["lo"], p["hi"], p["margin"] or 0.0
    if p["direction"] == "+":
        return "for" if lo > 0 else "against" if hi < 0 else "noise"
    if p["direction"] == "-":
        return "for" if hi < 0 else "against" if lo > 0 else "noise"
    return "for" if -m <= lo and hi <= m else "against" if lo > m or hi < -m else "noise"


def interval(p: dict) -> str:
    return f"{p['mean']:+.4g} [{p['lo']:+.4g}, {p['hi']:+.4g}]"


def verdict(parts: list[dict], failed_precondition: str | None = None) -> tuple[str, str]:
    """(verdict, why) from the parts under the rules above."""
    if failed_precondition:
        return "not testable", failed_precondition
    if not parts:
        return "not testable", "the study has none of the rows this claim compares"
    states = [part_state(p) for p in parts]
    for p, state in zip(parts, states):
        if state == "missing":
            return "not testable", f"{p['name']}: no 95% interval yet (needs at least 2 seeds of both rows)"
    for p, state in zip(parts, states):
        if state == "against":
            return "not held", f"{p['name']}: {interval(p)} excludes 0 against the claim ({p['direction']})"
    for p, state in zip(parts, states):
        if state == "noise":
            return "within noise", f"{p['name']}: {interval(p)} does not exclude 0 in the claimed direction"
    return "held", "every part's 95% interval excludes 0 in the claimed direction"


def claim(name: str, text: str, parts: list[dict], failed_precondition: str | None = None) -> Claim:
    return Claim(name, text, *verdict(parts, failed_precondition), parts)


def values(result: dict, row: str, metric: str) -> dict:
    """{seed: value} of a row's metric ({} when the row or metric is missing)."""
    return result["rows"].get(row, {}).get(metric, {}).get("values", {})


def layer_mean(result: dict, row: str, metric: str, layers: list[int], fn=lambda v, layer: v) -> dict:
    """{seed: mean over layers of fn(value, layer)} for the seeds that have every layer."""
    per = [values(result, row, f"{metric}/L{layer}") for layer in layers]
    seeds = [s for s in (per[0] if per else {}) if all(s in p for p in per)]
    return {s: sum(fn(p[s], layer) for p, layer in zip(per, layers)) / len(layers) for s in seeds}


def head_gap(result: dict, row: str, teacher_heads: list, layers: list[int]) -> dict:
    """{seed: mean over layers and heads of |row's head h - teacher's head h|} (per-head relations pair them)."""
    pairs = [(f"head_distance/L{layer}/H{h}", t) for layer in layers for h, t in enumerate(teacher_heads[layer - 1])]
    per = [(values(result, row, metric), t) for metric, t in pairs]
    seeds = [s for s in (per[0][0] if per else {}) if all(s in v for v, _ in per)]
    return {s: sum(abs(v[s] - t) for v, t in per) / len(per) for s in seeds}


def half_width(result: dict, rows: list[str], metric: str, layers: list[int]) -> float:
    """The widest 95% half-width of rows' metric at layers (0 where there is no interval)."""
    widths = [
        (s["ci95"][1] - s["ci95"][0]) / 2
        for row in rows
        for layer in layers
        if (s := result["rows"].get(row, {}).get(f"{metric}/L{layer}")) and s.get("ci95")
    ]
    return max(widths, default=0.0)


def claim_a(result: dict, teachers: dict, r: ClaimRoles) -> Claim:
    parts = []
    for metric in r.metrics:
        present = [row for row in r.single if values(result, row, metric)]
        best = max(present, key=lambda row: result["rows"][row][metric]["mean"]) if present else r.single[0]
        parts.append(
            part(
                f"{metric} {r.hybrid} - {best} (best single-teacher)",
                paired(values(result, r.hybrid, metric), values(result, best, metric)),
                "+",
            )
        )
    return claim("a", "Hybrid's top-1 above the best single-teacher student's", parts)


def precondition_b(result: dict, teachers: dict, r: ClaimRoles) -> str | None:
    mim, sup, layers = teachers[r.mae_teacher], teachers[r.sup_teacher], r.relation_layers
    names = ",".join(f"L{layer}" for layer in layers)
    nearest = min(min(mim["per_head"][layer - 1]) for layer in layers) / mim["uniform"]
    if nearest > r.local:
        return (
            f"the MIM teacher has no local head in {names}: its nearest head is at {nearest:.2f} x the "
            f"uniform-attention distance (local: <= {r.local})"
        )
    gap = sum(abs(mim["distance"][layer - 1] - sup["distance"][layer - 1]) for layer in layers) / len(layers)
    noise = half_width(result, [r.hybrid, r.sup_student], "distance", layers)
    if gap <= noise:
        return (
            f"the two teachers' distances in {names} differ by {gap:.2f} px, within the students' seed noise "
            f"({noise:.2f} px, the widest 95% half-width)"
        )
    return None


def student_depth(result: dict, row: str) -> int:
    return max((int(m.split("/L")[1]) for m in result["rows"].get(row, {}) if m.startswith("distance/L")), default=0)


def closer_parts(result: dict, mim: dict, r: ClaimRoles, other: str, layers: list[int]) -> list[dict]:
    """|other - MIM| - |Hybrid - MIM| at the relation layers, as layer means and (where cells record heads)
    head by head: > 0 when Hybrid is the closer one."""
    names = ",".join(f"L{layer}" for layer in layers)
    to_mim = lambda v, layer: abs(v - mim["distance"][layer - 1])  # noqa: E731
    parts = [
        part(
            f"|{other} - MIM| - |{r.hybrid} - MIM| at {names}, layer means (px)",
            paired(
                layer_mean(result, other, "distance", layers, to_mim),
                layer_mean(result, r.hybrid, "distance", layers, to_mim),
            ),
            "+",
        )
    ]
    if values(result, r.hybrid, f"head_distance/L{layers[0]}/H0"):
        parts.append(
            part(
                f"|{other}_h - MIM_h| - |{r.hybrid}_h - MIM_h| at {names}, head by head (px)",
                paired(
                    head_gap(result, other, mim["per_head"], layers),
                    head_gap(result, r.hybrid, mim["per_head"], layers),
                ),
                "+",
            )
        )
    return parts


def last_layer_part(result: dict, hybrid: str, m: float, s: float, last: int) -> dict:
    """Hybrid's last-layer distance H past the teachers' midpoint towards the supervised teacher's S (MIM's M),
    doubled: (H - M) - (S - H) when S > M. It equals |H - M| - |H - S| while H lies between the teachers, and
    keeps depending on H beyond them, where |H - M| - |H - S| is the teachers' own gap in every seed (rules v2
    of this part, chosen after the locality study's mae_m25 variant showed that zero-width interval)."""
    side = 1.0 if s >= m else -1.0
    return part(
        f"{hybrid} past the teachers' midpoint towards sup at L{last}, x2 (px)",
        paired(
            layer_mean(result, hybrid, "distance", [last], lambda v, layer: side * (v - m)),
            layer_mean(result, hybrid, "distance", [last], lambda v, layer: side * (s - v)),
        ),
        "+",
    )


def claim_b(result: dict, teachers: dict, r: ClaimRoles) -> Claim:
    mim, sup = teachers[r.mae_teacher], teachers[r.sup_teacher]
    layers, last = r.relation_layers, student_depth(result, r.hybrid) or len(mim["distance"])
    names = ",".join(f"L{layer}" for layer in layers)
    parts = closer_parts(result, mim, r, r.sup_student, layers)
    if r.relation_control:
        parts += closer_parts(result, mim, r, r.relation_control, layers)
    if last <= len(mim["distance"]):
        parts.append(last_layer_part(result, r.hybrid, mim["distance"][last - 1], sup["distance"][last - 1], last))
    others = r.sup_student + (f" and {r.relation_control}" if r.relation_control else "")
    note = f" ({r.mim_note})" if r.mim_note else ""
    return claim(
        "b",
        f"attention distance: Hybrid closer to the MIM teacher's{note} than {others} in the "
        f"relation layers ({names}); in the last layer (L{last}) closer to the supervised teacher's "
        "than to the MIM teacher's",
        parts,
        precondition_b(result, teachers, r),
    )


def claim_c(result: dict, teachers: dict, r: ClaimRoles) -> Claim:
    layers = r.relation_layers
    names = ",".join(f"L{layer}" for layer in layers)
    mim, sup = (
        sum(teachers[t]["nmi"][layer - 1] for layer in layers) / len(layers) for t in (r.mae_teacher, r.sup_teacher)
    )
    failed = (
        None
        if mim > sup
        else (
            f"the premise fails: the MIM teacher's NMI in {names} ({mim:.4f}) does not "
            f"exceed the supervised teacher's ({sup:.4f})"
        )
    )
    diff = paired(layer_mean(result, r.hybrid, "nmi", layers), layer_mean(result, r.sup_student, "nmi", layers))
    return claim(
        "c",
        f"NMI of Hybrid's relation layers ({names}) above {r.sup_student}'s",
        [part(f"NMI {r.hybrid} - {r.sup_student} at {names}", diff, "+")],
        failed,
    )


def claim_d(result: dict, teachers: dict, r: ClaimRoles) -> Claim:
    parts = []
    for kind, row in r.masking.items():
        close = kind == "none"  # Table 8: "very close performance" to no masking, better than random
        parts += [
            part(
                f"{metric} {r.hybrid} - {row} ({kind} masking)",
                paired(values(result, r.hybrid, metric), values(result, row, metric)),
                "=" if close else "+",
                r.margin_top1 if close else None,
            )
            for metric in r.metrics
        ]
    return claim(
        "d",
        f"progressive masking above random masking and within +-{r.margin_top1} top-1 of no masking at equal epochs",
        parts,
    )


def claim_e(result: dict, teachers: dict, r: ClaimRoles) -> Claim:
    parts, layers = [], ",".join(f"L{layer}" for layer in r.late_layers)

    def diff(row, metric):
        return paired(
            layer_mean(result, row, metric, r.late_layers), layer_mean(result, r.sup_student, metric, r.late_layers)
        )

    if r.decoder:
        parts += [
            part(f"head spread {r.decoder} - {r.sup_student} at {layers} (px)", diff(r.decoder, "spread"), "+"),
            part(f"distance {r.decoder} - {r.sup_student} at {layers} (px)", diff(r.decoder, "distance"), "-"),
            part(
                f"linear/top1 {r.decoder} - {r.sup_student}",
                paired(values(result, r.decoder, "linear/top1"), values(result, r.sup_student, "linear/top1")),
                "-",
            ),
        ]
    if r.mask_recon:
        parts.append(
            part(
                f"distance {r.mask_recon} - {r.sup_student} at {layers} (px)",
                diff(r.mask_recon, "distance"),
                "=",
                r.margin_px,
            )
        )
    return claim(
        "e",
        f"a decoder makes the encoder's late layers ({layers}) more diverse (head spread up), lowers "
        "their attention distance and its linear top-1; mask feature reconstruction keeps that "
        f"distance within +-{r.margin_px} px of direct distillation",
        parts,
    )


JUDGES = {"a": claim_a, "b": claim_b, "c": claim_c, "d": claim_d, "e": claim_e}


def judge_claims(result: dict, teachers: dict, roles: ClaimRoles) -> list[Claim]:
    """teachers: {name: {'distance': [per layer], 'nmi': [...], 'per_head': [[per head] per layer],
    'uniform': px}} of the shared teachers (from their analysis)."""
    unknown = [c for c in roles.judge if c not in JUDGES]
    if unknown:
        raise ValueError(f"claims.judge: unknown claim '{unknown[0]}'; claims: {', '.join(JUDGES)}")
    return [JUDGES[c](result, teachers, roles) for c in roles.judge]


def cells(*texts: str) -> str:
    """A markdown table row; a '|' inside a cell is escaped."""
    return "| " + " | ".join(t.replace("|", "\\|") for t in texts) + " |"


def markdown(claims: list[dict], registered: str = "") -> list[str]:
    lines = [
        "### The paper's claims",
        "",
        "Paired differences over seeds: mean [95% interval]. Held only when every part's interval excludes 0 "
        "in the claimed direction; not held when one excludes it against; within noise otherwise "
        "(src/hybrid_distill/study/claims.py)." + (f" Rules and protocols fixed {registered}." if registered else ""),
        "",
        "| claim | verdict | why |",
        "|---|---|---|",
        *[cells(f"({c['name']}) {c['text']}", f"**{c['verdict']}**", c["why"]) for c in claims],
        "",
    ]
    for c in claims:
        lines += [f"- ({c['name']}) parts:"]
        lines += [
            f"  - {p['name']} ({p['direction']}{'' if p['margin'] is None else ' ' + str(p['margin'])}): "
            + (interval(p) if p["lo"] is not None else "no interval")
            for p in c["parts"]
        ]
    return lines + [""]
