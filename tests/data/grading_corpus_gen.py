"""Writes tests/data/grading_corpus.jsonl: (gold, response, expected) triples for the grader.

Deterministic (a fixed seed) and labelled by construction, never by running the grader:
each gold comes with answers that are right by definition (the same value written another
way) and near misses that are wrong by definition (the last entry of a matrix, a sign
flip, a rounded decimal, one element of a list, an off-by-one). Run it again after editing:
    .venv/bin/python tests/data/grading_corpus_gen.py
"""
from __future__ import annotations

import json
import random
from fractions import Fraction
from pathlib import Path

OUT = Path(__file__).with_name("grading_corpus.jsonl")
ROW_SEP = "\\\\"

# (type, gold, [right answers], [near misses]) written by hand, many from math_eval.parquet.
# "8,221" (no space) is not an answer to "$221,$8$": a comma between digit groups is a
# thousands separator (58,500), so a list is written with spaces or a non-3-digit group.
HAND = [
    ("matrix", r"\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}",
     [r"\begin{pmatrix}-1/3\\2/3\\5/3\end{pmatrix}", r"\begin{bmatrix} -\frac{1}{3} \\ \frac{2}{3} \\ \frac{5}{3} \end{bmatrix}"],
     ["5/3", r"\frac{5}{3}", r"\begin{pmatrix} -1/3 \\ 2/3 \end{pmatrix}", r"\begin{pmatrix} 1/3 \\ 2/3 \\ 5/3 \end{pmatrix}"]),
    ("matrix", r"\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}",
     [r"\begin{bmatrix}-1&0\\0&-1\end{bmatrix}"], ["-1", r"\begin{pmatrix} -1 & 0 \\ 0 & 1 \end{pmatrix}"]),
    ("matrix", r"\begin{pmatrix} 16/49 \\ 48/49 \\ 24/49 \end{pmatrix}",
     [r"\begin{bmatrix}\frac{16}{49}\\\frac{48}{49}\\\frac{24}{49}\end{bmatrix}"], [r"\frac{24}{49}", r"\begin{pmatrix} 16/49 \\ 24/49 \\ 48/49 \end{pmatrix}"]),
    ("trailing_dot", "-1./3", ["-1/3", r"-\frac{1}{3}", r"\frac{-1}{3}"], ["-1", "-3", "1/3", "-0.333"]),
    ("trailing_dot", "-3./2", ["-3/2", "-1.5", r"-\frac{3}{2}"], ["-3", "-2", "3/2"]),
    ("expression", r"\hbar \omega(v+1 / 2)-\frac{E_{0}^{2} e^{2}}{2 m \omega^{2}}",
     [r"\hbar\omega(v+\frac{1}{2})-\frac{E_0^2e^2}{2m\omega^2}", r"\hbar \omega (v + 1/2) - E_{0}^{2} e^{2}/(2 m \omega^{2})"],
     ["2", r"\hbar \omega(v+1 / 2)", r"\hbar \omega(v+1 / 2)+\frac{E_{0}^{2} e^{2}}{2 m \omega^{2}}"]),
    ("equation", "$N=n$", ["N=n", "n"], ["N=n + 1", "N=n+1", "n+1", "N=2n"]),
    ("equation", "x=5", ["5", "x = 5"], ["6", "x=6", "-5"]),
    ("equation", "y = 2x + 3", ["y=3+2x", "2x+3"], ["y=2x-3", "y=3x+2"]),
    ("equation", "$k=n+1$", ["k=n+1", "n+1"], ["k=n", "k=n-1"]),
    ("multi", "$221,$8$", ["221, 8", "8, 221", "221,8"], ["221", "8", "221, 9"]),
    ("multi", "$69$,$84$", ["69,84", "84, 69"], ["69", "84", "69, 85"]),
    ("multi", "$f(n)=n$, $g(n)=1$", ["f(n)=n, g(n)=1"], ["f(n)=n", "f(n)=n, g(n)=2"]),
    ("multi", "$-1$,$2$,$-2$", ["-1,2,-2", "2, -2, -1"], ["-1,2", "1,2,-2"]),
    ("list", "1,-2", ["-2, 1", "1, -2"], ["1", "-2", "1,2"]),
    ("list", "3, 5, 7", ["3,5,7", "7, 5, 3"], ["3, 5", "3, 5, 7, 9", "3, 5, 8"]),
    ("list", "2500,7500", ["2500, 7500"], ["2500", "7500", "2500,7600"]),
    ("list", r"\{1\pm\sqrt{5},-2\}", [r"1+\sqrt{5}, 1-\sqrt{5}, -2"], [r"1+\sqrt{5}, -2", r"1\pm\sqrt{5}"]),
    ("list", r"1 \pm \sqrt{19}", [r"1+\sqrt{19}, 1-\sqrt{19}"], [r"1+\sqrt{19}", r"1-\sqrt{19}"]),
    ("tuple", "(6,31,-1)", ["(6, 31, -1)"], ["(6,-1,31)", "(6,31,1)", "(6,31)"]),
    ("tuple", r"\left( 3, \frac{\pi}{2} \right)", [r"(3, \pi/2)", r"\left(3,\frac{\pi}{2}\right)"], [r"(3, \pi)", r"(\frac{\pi}{2}, 3)", "3"]),
    ("tuple", "$(1,8,19), (2,7,13), (4,5,7)$", ["(2,7,13), (1,8,19), (4,5,7)"], ["(1,8,19), (2,7,13)", "(1,8,19), (2,7,13), (4,5,8)"]),
    ("interval", "(3,4]", ["(3, 4]"], ["[3,4]", "(3,4)", "(3,5]"]),
    ("interval", r"(-\infty, 0]", [r"(-\infty,0]"], [r"(-\infty, 0)", r"(-\infty, 1]"]),
    ("interval", r"(0,9) \cup (9,36)", [r"(0,9)\cup(9,36)"], ["(0,36)", r"(0,9) \cup (9,35)"]),
    ("interval", r"x \in [-2,7]", ["[-2,7]", r"x\in[-2,7]"], ["(-2,7)", "[-2,8]"]),
    ("interval", r"\left(\frac{3}{5},\frac{8}{3}\right]", [r"(3/5, 8/3]", r"(0.6, \frac{8}{3}]"], [r"[3/5, 8/3]", r"(3/5, 8/3)"]),
    ("units", r"5.4 \text{ cents}", ["5.4", r"5.4\text{ cents}"], ["5.5", "54"]),
    ("units", r"864 \mbox{ inches}^2", ["864", r"864 \text{ inches}^2"], ["865", "86.4"]),
    ("units", r"\frac{270}7\text{ degrees}", [r"\frac{270}{7}", "270/7"], ["270", r"\frac{270}{8}"]),
    ("units", r"90^\circ", ["90", r"90^{\circ}"], ["91", "-90"]),
    ("currency", r"\$18.90", ["18.90", "18.9", r"\$18.90"], ["18.91", "1890"]),
    ("thousands", r"10,\!080", ["10080", "10,080"], ["10081", "1008"]),
    ("thousands", "58,500", ["58500"], ["58,501", "5850"]),
    ("thousands", r"11,\! 111,\! 111,\! 100", ["11111111100"], ["11111111101", r"11,\! 111,\! 111,\! 101"]),
    ("list", "16,3,1,1", ["16, 3, 1, 1", "1, 1, 3, 16"], ["16,3,1", "16, 3, 1, 1, 1"]),
    ("list", "-2,-2", ["-2, -2"], ["-2"]),
    ("equation", r"\frac{dM}{dt}=\frac{10^{5} L_{\odot}}{0.007 c^{2} M_{\odot}^{6}} M^{6}",
     [r"dM/dt = \frac{10^5 L_{\odot} M^6}{0.007 c^2 M_{\odot}^6}"],
     [r"\frac{dM}{dt}=\frac{10^{5} L_{\odot}}{0.007 c^{2} M_{\odot}^{6}} M^{7}", r"\frac{10^{5} L_{\odot}}{0.007 c^{2} M_{\odot}^{6}} M^{6}"]),
    ("text", r"\text{(C)}", ["C", r"\textbf{(C)}", "(C)"], ["D", r"\text{(B)}"]),
    ("text", r"\text{Evelyn}", ["Evelyn", r"\text{evelyn}"], ["Eve", "Navin"]),
    ("text", r"\text{east}", ["East", r"\text{ east }"], ["west", "north"]),
    ("percent", "62.5%", ["62.5", r"62.5\%", "0.625"], ["62", r"0.625\%", "63.5%"]),
    ("percent", r"$8 \%$", ["8", r"8\%", "0.08"], ["9", r"0.08\%"]),
    ("rounding", r"\frac{9}{52}", [r"\frac{18}{104}", "9/52"], ["0.1730769", "0.173077", "0.17"]),
    ("rounding", "3.89e-10", [r"3.89 \times 10^{-10}", "3.89e-10", r"3.890\times10^{-10}"], ["0", "3.9e-10", r"3.89 \times 10^{-9}"]),
    ("rounding", "4.5e33", [r"4.5 \times 10^{33}", "45e32"], [r"4.6 \times 10^{33}", "4.5", r"4.5\times 10^{32}"]),
    ("rounding", r"\pi", [r"\pi", "3.14159265358979"], ["3.14159", "3.14", "22/7"]),
    ("rounding", r"\sqrt{2}", [r"2^{1/2}", r"\frac{2}{\sqrt{2}}"], ["1.414214", "1.41"]),
    ("fraction", r"\frac43", ["4/3", r"\frac{4}{3}", r"1\frac{1}{3}"], ["3/4", "1.33"]),
    ("fraction", r"1\frac{4}{5}", ["9/5", "1.8", r"\frac{9}{5}"], ["4/5", "14/5"]),
    ("complex", "6 - 5i", ["6-5i", "-5i+6"], ["6+5i", "5i-6"]),
    ("expression", r"x^5 - x^4 + x^3 - x^2 + x - 1", ["x^5-x^4+x^3-x^2+x-1", "(x-1)(x^4+x^2+1)"], ["x^5-x^4+x^3-x^2+x+1"]),
    ("expression", r"$\frac{1}{2 n+2}$", [r"\frac{1}{2(n+1)}", "1/(2n+2)"], [r"\frac{1}{2n+1}", r"\frac{1}{2n}"]),
    ("expression", r"$\binom{2n}{n}$", [r"\binom{2n}{n}"], [r"\binom{2n}{n+1}"]),
    ("base", "52_8", ["52_8", "52_{8}"], ["53_8"]),
    ("aime", "025", ["25", "025"], ["24", "250"]),
    ("amc", "142.0", ["142"], ["141", "14.2"]),
    # issue 29's false accepts and false reject, as the issue found them
    ("derivative", r"\frac{dy}{dx}=3x^2", [r"dy/dx = 3x^2", r"\frac{d y}{d x}=3 x^{2}"],
     [r"\frac{dy}{dx}=5x^2", r"\frac{dy}{dt}=3x^2", "y=3x^2"]),
    ("derivative", r"\frac{dv}{dt}=-g", [r"\frac{dv}{dt} = -g"], [r"\frac{dv}{dt}=g", r"\frac{dv}{dt}=-2g"]),
    ("derivative", r"\frac{d x}{d t}=k x-a", [r"dx/dt = kx - a"], [r"\frac{dx}{dt}=kx+a", r"\frac{dx}{dt}=ax-k"]),
    ("prime", "y'=2x", ["y' = 2x", r"y^{\prime}=2x"], ["y=2x", "y''=2x", "y'=3x"]),
    ("prime", "f'(x)=6x-1", ["f'(x) = 6x - 1"], ["f(x)=6x-1", "f'(x)=6x+1"]),
    ("mixed_number", r"\frac{7}{2}", ["3 1/2", r"3\frac{1}{2}", r"3\ 1/2"], ["31/2", "4/2"]),
    ("mixed_number", "2", ["4/2"], ["3 1/2"]),
    ("mixed_number", "3 1/2", ["7/2", r"\frac{7}{2}", "3.5"], ["31/2", "2"]),
    ("units", r"12 \text{ cm}", ["12", r"12\text{ centimeters}", r"12 \mbox{cm}"], [r"12 \text{ m}", r"12 \text{ cm}^2", "13"]),
    ("units", r"15\mbox{ cm}^2", [r"15 \text{ square cm}", "15", r"15 \text{ cm}^{2}"], [r"15\mbox{ cm}^3", r"15 \text{ m}^2"]),
    ("units", r"90^\circ", [r"90 \text{ degrees}"], [r"90 \text{ radians}"]),
    ("set_tuple", "(3,4)", ["(3, 4)", r"\left(3,4\right)"], [r"\{3,4\}", "3, 4", "(4,3)"]),
    ("set_tuple", r"\{1,2,3\}", ["3, 2, 1", r"\{3,1,2\}"], ["(1,2,3)"]),
    ("integer_exact", "5", ["5.0", "5.000"], ["5.0000000001", "4.9999999999"]),
    ("integer_exact", "11111111100", ["11111111100.0"], ["11111111100.01"]),
    ("base", "40_9", ["40_{9}", "40"], ["40_8", "41_9"]),
    ("thousands", r"10\,080", ["10080", r"10\,080"], ["90", "1008"]),
    ("gamma", r"m_{p} c^{2}\left(\gamma^{2}-1\right) \sin ^{2} \theta",
     [r"m_p c^2 (\gamma^2 - 1) \sin^2\theta"], [r"m_{p} c^{2}\left(\gamma^{2}-2\right) \sin ^{2} \theta"]),
]

# Whole responses (not "So the answer is \boxed{...}."): which box is the answer, its spacing.
RAW = [
    ("nested_box", "42", r"So \boxed{\boxed{42} 41}.", False),
    ("nested_box", "41", r"So \boxed{\boxed{42} 41}.", False),
    ("nested_box", "42", r"So \boxed{\boxed{42}}.", True),
    ("nested_box", "42", r"First \boxed{41}, then \boxed{ \boxed{42} }.", True),
    ("tex_space", r"\frac{9}{52}", r"So \boxed{9/52\ }.", True),
    ("tex_space", r"\frac{9}{52}", r"So \boxed{\,9/52\quad}.", True),
    ("tex_space", "12", r"So \boxed{12\;}.", True),
    ("tex_space", "12", r"So \boxed{\ 13\ }.", False),
]


def _frac_tex(f: Fraction) -> str:
    s = "-" if f < 0 else ""
    return f"{s}\\frac{{{abs(f.numerator)}}}{{{f.denominator}}}"


def generated(rng: random.Random) -> list[tuple[str, str, str, bool]]:
    out = []
    for _ in range(14):  # fractions: equal forms vs sign flip, off-by-one, reciprocal, 7-digit rounding
        q = rng.choice([7, 11, 13, 17, 52, 97])
        p = rng.randint(2, 5 * q)
        while Fraction(p, q).denominator == 1:
            p += 1
        f = Fraction(p, q)
        g = _frac_tex(f)
        for r in (f"{f.numerator}/{f.denominator}", f"\\dfrac{{{2 * f.numerator}}}{{{2 * f.denominator}}}"):
            out.append(("gen_fraction", g, r, True))
        for r in (_frac_tex(-f), _frac_tex(f + Fraction(1, f.denominator)), f"{f.denominator}/{f.numerator}",
                  f"{float(f):.7f}"):
            out.append(("gen_fraction", g, r, False))
    for _ in range(8):  # integer matrices: bmatrix/no-space forms vs last entry, one entry off
        rows, cols = rng.choice([(2, 1), (3, 1), (2, 2)])
        m = [[rng.randint(-9, 9) for _ in range(cols)] for _ in range(rows)]
        body = lambda mm, sep=" \\\\ ": sep.join(" & ".join(str(x) for x in row) for row in mm)
        g = f"\\begin{{pmatrix}} {body(m)} \\end{{pmatrix}}"
        tight = body(m, ROW_SEP).replace(" ", "")
        out.append(("gen_matrix", g, f"\\begin{{bmatrix}}{tight}\\end{{bmatrix}}", True))
        out.append(("gen_matrix", g, g.replace(" ", ""), True))
        out.append(("gen_matrix", g, str(m[-1][-1]), False))
        m2 = [row[:] for row in m]
        m2[-1][-1] += 1
        out.append(("gen_matrix", g, f"\\begin{{pmatrix}} {body(m2)} \\end{{pmatrix}}", False))
    for _ in range(10):  # lists: a permutation vs one element, an element dropped, one element changed
        xs = rng.sample(range(-20, 40), rng.randint(2, 4))
        g = ", ".join(map(str, xs))
        out.append(("gen_list", g, ",".join(map(str, reversed(xs))), True))
        out.append(("gen_list", g, str(xs[0]), False))
        out.append(("gen_list", g, ", ".join(map(str, xs[:-1] + [xs[-1] + 1])), False))
    for _ in range(8):  # decimals with many digits vs the same value rounded
        n, k = rng.randint(10 ** 6, 10 ** 7), rng.randint(3, 6)
        v, d = Fraction(n, 10 ** k), f"{str(n)[:-k]}.{str(n)[-k:]}"
        out.append(("gen_decimal", d, _frac_tex(v), True))
        out.append(("gen_decimal", d, d + "0", True))
        out.append(("gen_decimal", d, f"{float(v):.3g}", False))
        out.append(("gen_decimal", d, f"{float(-v)}", False))
    for _ in range(6):  # equations x = a
        a, var = rng.randint(-30, 30), rng.choice("xyzk")
        g = f"{var}={a}"
        out += [("gen_equation", g, str(a), True), ("gen_equation", g, f"{var} = {a}", True),
                ("gen_equation", g, f"{var}={a + 1}", False), ("gen_equation", g, f"{var}={a} + 1", False)]
    for _ in range(6):  # derivative equations: another right side, another variable, the function alone
        a, b, k = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 4)
        v, t = rng.choice([("y", "x"), ("v", "t"), ("N", "t")])
        lhs = f"\\frac{{d{v}}}{{d{t}}}"
        g = f"{lhs}={a}{t}^{k}"
        out += [("gen_derivative", g, f"d{v}/d{t} = {a}{t}^{{{k}}}", True),
                ("gen_derivative", g, f"{lhs}={a + b}{t}^{k}", False),
                ("gen_derivative", g, f"{lhs}=-{a}{t}^{k}", False),
                ("gen_derivative", g, f"\\frac{{d{v}}}{{ds}}={a}{t}^{k}", False),
                ("gen_derivative", g, f"{v}={a}{t}^{k}", False)]
    for _ in range(6):  # mixed numbers: a + b/c, never (a + b)/c, never the digits run together
        c = rng.randint(3, 9)
        a, b = rng.randint(1, 9), rng.randint(1, c - 1)
        f = Fraction(a * c + b, c)
        mixed = f"{a} {b}/{c}"
        out += [("gen_mixed", _frac_tex(f), mixed, True),
                ("gen_mixed", _frac_tex(f), f"{a}{b}/{c}", False)]
        if Fraction(a + b, c) != f:
            out.append(("gen_mixed", _frac_tex(Fraction(a + b, c)), mixed, False))
    for _ in range(6):  # units: the same unit spelled otherwise, no unit, another unit, another power
        n, (u, alias, other), k = rng.randint(2, 500), rng.choice(UNITS), rng.choice([1, 2, 3])
        pw = "" if k == 1 else f"^{k}"
        g = f"{n} \\text{{ {u}}}{pw}"
        out += [("gen_units", g, str(n), True), ("gen_units", g, f"{n}\\mbox{{ {alias}}}{pw}", True),
                ("gen_units", g, f"{n} \\text{{ {other}}}{pw}", False),
                ("gen_units", g, f"{n} \\text{{ {u}}}^{k % 3 + 1}", False)]
    for _ in range(6):  # ordered pairs vs sets and bare lists; sets vs tuples
        xs = rng.sample(range(-9, 20), rng.randint(2, 3))
        tup, st = "(" + ", ".join(map(str, xs)) + ")", "\\{" + ", ".join(map(str, xs)) + "\\}"
        out += [("gen_set_tuple", tup, tup.replace(" ", ""), True), ("gen_set_tuple", tup, st, False),
                ("gen_set_tuple", tup, ", ".join(map(str, xs)), False),
                ("gen_set_tuple", tup, "(" + ", ".join(map(str, xs[::-1])) + ")", False),
                ("gen_set_tuple", st, ", ".join(map(str, xs[::-1])), True), ("gen_set_tuple", st, tup, False)]
    for _ in range(6):  # integer golds: a decimal with a nonzero fraction is wrong however close
        n, k = rng.randint(1, 10 ** 6), rng.randint(8, 12)
        out += [("gen_integer", str(n), f"{n}.{'0' * k}", True), ("gen_integer", str(n), f"{n}.{'0' * k}1", False),
                ("gen_integer", str(n), f"{n - 1}.{'9' * k}", False)]
    for _ in range(6):  # numerals with a base: another base, the digits alone
        base = rng.randint(3, 9)
        digits = "".join(str(rng.randint(0, base - 1)) for _ in range(rng.randint(2, 4))).lstrip("0") or "1"
        g = f"{digits}_{{{base}}}"
        out += [("gen_base", g, f"{digits}_{base}", True), ("gen_base", g, digits, True),
                ("gen_base", g, f"{digits}_{{{base + 1}}}", False)]
    return out


# (unit, another spelling of it, a different unit)
UNITS = [("cm", "centimeters", "m"), ("inches", "in", "feet"), ("meters", "m", "km"), ("seconds", "s", "minutes"),
         ("grams", "g", "kg"), ("cents", "cent", "dollars"), ("feet", "ft", "yards")]


def main() -> None:
    rows = []
    for kind, gold, rights, misses in HAND:
        rows += [(kind, gold, r, True) for r in rights] + [(kind, gold, r, False) for r in misses]
    rows += generated(random.Random(0))
    rows = [(kind, gold, f"So the answer is \\boxed{{{resp}}}.", ok) for kind, gold, resp, ok in rows] + RAW
    with OUT.open("w") as f:
        for kind, gold, resp, ok in rows:
            f.write(json.dumps({"type": kind, "gold": gold, "response": resp, "expected": 1.0 if ok else 0.0}) + "\n")
    n_miss = sum(not r[3] for r in rows)
    print(f"{OUT}: {len(rows)} triples, {n_miss} near misses")


if __name__ == "__main__":
    main()
