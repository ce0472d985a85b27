"""bench.mutation's sampling helpers, value by value (the tool itself runs
by hand, out of CI)."""

from __future__ import annotations

import collections
import subprocess

import pytest

from bench.mutation import again_counts, changed_since, choose_sample, module_path, read_report, report, wilson


def test_a_sample_is_the_same_for_the_same_seed_and_in_name_order():
    names = [f"m{i:03d}" for i in range(200)]
    a = choose_sample(list(reversed(names)), 10, 1)
    assert a == choose_sample(names, 10, 1) and a == sorted(a) and len(set(a)) == 10 and set(a) <= set(names)
    assert choose_sample(names, 10, 2) != a
    assert choose_sample(names[:5], 10, 1) == names[:5]  # never more than there are


def test_the_wilson_interval_matches_its_textbook_values():
    low, high = wilson(94, 120)
    assert (round(100 * low), round(100 * high)) == (70, 85)
    low, high = wilson(112, 120)
    assert (round(100 * low), round(100 * high)) == (87, 97)
    assert wilson(0, 0) == (0.0, 1.0)
    low, high = wilson(10, 10)
    assert high == 1.0 and 0.69 < low < 0.73


def _full_report(tmp_path):
    counts = {"pkg.a": collections.Counter({"killed": 8, "survived": 2}),
              "pkg.b": collections.Counter({"killed": 5, "survived": 1, "no tests": 3})}
    shown = [("pkg.a.x_f__mutmut_1", "# pkg.a.x_f__mutmut_1: survived\n-x\n+y"),
             ("pkg.a.x_g__mutmut_4", "# pkg.a.x_g__mutmut_4: survived\n-x\n+y"),
             ("pkg.b.x_h__mutmut_2", "# pkg.b.x_h__mutmut_2: survived\n-x\n+y")]
    path = tmp_path / "r.md"
    path.write_text("# Mutation testing report (2026-12-01, mutmut, 2 cores)\n\n" + report("area", counts, shown, 12.0)
                    + report("other", {"pkg.z": collections.Counter({"survived": 4})}, [], 1.0))
    return path


def test_an_earlier_report_is_read_back_for_its_area_only(tmp_path):
    counts, survivors, commit = read_report(str(_full_report(tmp_path)), "area")
    assert commit is None  # (this report names none)
    assert counts == {"pkg.a": {"killed": 8, "survived": 2, "no tests": 0, "timeout": 0},
                      "pkg.b": {"killed": 5, "survived": 1, "no tests": 3, "timeout": 0}}
    assert survivors == ["pkg.a.x_f__mutmut_1", "pkg.a.x_g__mutmut_4", "pkg.b.x_h__mutmut_2"]
    with pytest.raises(SystemExit, match="diffs are not all there"):
        read_report(str(_full_report(tmp_path)), "other")  # survivors counted, none shown
    with pytest.raises(SystemExit, match="no full run"):
        read_report(str(_full_report(tmp_path)), "missing")


def test_a_run_again_keeps_the_kills_and_recounts_what_it_ran():
    before = {"pkg.a": collections.Counter({"killed": 8, "survived": 2}),
              "pkg.b": collections.Counter({"killed": 5, "survived": 1, "no tests": 3})}
    found = [("pkg.a.x_f__mutmut_1", "killed"), ("pkg.a.x_g__mutmut_4", "survived"),
             *[(f"pkg.b.x_h__mutmut_{i}", "killed") for i in range(7)], ("pkg.b.x_h__mutmut_9", "no tests"),
             ("pkg.b.x_h__mutmut_8", "survived")]
    counts = again_counts(before, found, whole={"pkg.b"})
    assert counts == {"pkg.a": {"killed": 9, "survived": 1}, "pkg.b": {"killed": 7, "no tests": 1, "survived": 1}}


def test_a_report_names_its_commit_and_changed_modules_are_found(tmp_path):
    path = tmp_path / "r.md"
    path.write_text("# Mutation testing report (2026-12-01, mutmut, 2 cores, commit c73e752)\n\n"
                    + report("area", {"pkg.a": collections.Counter({"killed": 1})}, [], 1.0))
    assert read_report(str(path), "area")[2] == "c73e752"
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "__init__.py").write_text("")
    (repo / "pkg" / "a.py").write_text("x = 1\n")
    (repo / "pkg" / "b.py").write_text("y = 1\n")

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "one")
    first = git("rev-parse", "HEAD")
    (repo / "pkg" / "a.py").write_text("x = 2\n")
    git("commit", "-qam", "two")
    assert changed_since(first, ["pkg.a", "pkg.b", "pkg"], root=str(repo)) == ["pkg.a"]
    assert module_path("pkg", str(repo)).endswith("pkg/__init__.py")
    with pytest.raises(SystemExit, match="cannot compare with 0123abc"):
        changed_since("0123abc", ["pkg.a"], root=str(repo))  # unknown here (a shallow clone)
