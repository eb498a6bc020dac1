"""The Step-0 guard judged by what would run: a detection that counts the signature and nothing
else on a realistic clean journal, and a docker restart the shell would actually execute."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from pvcheck.config import GuardConfig
from pvcheck.guard import (
    CLEAN_SAMPLE,
    SIGNATURE_SAMPLE,
    GuardSection,
    find_recovery,
    judge_detection,
    judge_recovery,
)
from pvcheck.procs import count_with
from pvcheck.records import VIP_SIGNATURE
from tests.helpers import ROOT, check_guard

# The real /upgrade-all layout: the detection nested in `vip=$(ssh cc-ci '…')`, the restart
# inside `if [ "${vip:-0}" -gt 0 ]`.
REAL_GUARD = ROOT / "lab" / "cc-ci-twin" / "upgrade-all" / "SKILL.md"
RESTART = "  ssh cc-ci 'systemctl restart docker'"
GREP = 'grep -c "available IP while allocating VIP"'
IF_LINE = 'if [ "${vip:-0}" -gt 0 ]; then'


def _variant(tmp_path: Path, old: str, new: str) -> Path:
    text = REAL_GUARD.read_text()
    assert old in text
    path = tmp_path / "SKILL.md"
    path.write_text(text.replace(old, new))
    return path


def _checks(path: Path, **cfg: object) -> dict[str, tuple[str, str, str]]:
    checks, _ = check_guard(GuardConfig(file=path, **cfg))
    return {c.id: (str(c.status), c.found, c.detail) for c in checks}


def _section(code: str) -> GuardSection:
    return GuardSection("0", 1, f"```bash\n{code}\n```")


# --- detection -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "grep",
    [
        'grep -c "I"',  # 1 on the old one-line signature sample, 0 on the old clean one
        'grep -c "VIP"',
        'grep -ic "allocating vip"',  # also counts "error deallocating vip"
        'grep -c "could not find an available"',  # also the address-pool error
    ],
)
def test_a_grep_for_a_fragment_of_the_signature_is_no_detection(tmp_path: Path, grep: str) -> None:
    status, found, detail = _checks(_variant(tmp_path, GREP, grep))["guard.detects"]
    assert status == "fail", (grep, found)
    assert "while allocating VIP" in detail


def test_the_pattern_must_contain_the_configured_part(tmp_path: Path) -> None:
    path = _variant(tmp_path, GREP, 'grep -c "while allocating VIP"')
    assert _checks(path)["guard.detects"][0] == "pass"
    strict = _checks(path, signature_part="could not find an available IP while allocating")
    assert strict["guard.detects"][0] == "fail"


def test_a_pattern_with_the_part_that_also_matches_ordinary_lines_fails(tmp_path: Path) -> None:
    grep = 'grep -c -E "while allocating VIP|Loading containers"'
    status, found, _ = _checks(_variant(tmp_path, GREP, grep))["guard.detects"]
    assert status == "fail" and found.endswith(", 2 on the clean sample"), found


def test_an_upper_case_pattern_counts_with_ignore_case_only(tmp_path: Path) -> None:
    assert _checks(_variant(tmp_path, GREP, 'grep -ic "WHILE ALLOCATING VIP"'))["guard.detects"][
        0
    ] == ("pass")
    assert _checks(_variant(tmp_path, GREP, 'grep -c "WHILE ALLOCATING VIP"'))["guard.detects"][
        0
    ] == ("fail")


def test_the_clean_sample_is_an_ordinary_docker_journal() -> None:
    lines = CLEAN_SAMPLE.splitlines()
    assert len(lines) >= 20 and VIP_SIGNATURE not in CLEAN_SAMPLE
    # journalctl's short format: "Mon DD HH:MM:SS host ident[pid]: message"
    assert all(" cc-ci " in line and "]: " in line for line in lines)
    assert any("level=info" in line for line in lines)
    assert any("module=raft" in line for line in lines)
    assert any("key modified" in line for line in lines)
    # Every weak pattern counts something here, so the clean count refuses it.
    for weak in ("I", "VIP", "IP", "allocat", "could not find an available", "docker"):
        assert (count_with(["grep", "-c", weak], CLEAN_SAMPLE) or 0) > 0, weak
    assert (count_with(["grep", "-ic", "allocating vip"], CLEAN_SAMPLE) or 0) > 0


def test_the_signature_sample_is_the_clean_journal_plus_one_signature_line() -> None:
    extra = set(SIGNATURE_SAMPLE.splitlines()) - set(CLEAN_SAMPLE.splitlines())
    assert len(extra) == 1 and VIP_SIGNATURE in extra.pop()
    assert count_with(["grep", "-c", VIP_SIGNATURE], SIGNATURE_SAMPLE) == 1
    assert count_with(["grep", "-c", VIP_SIGNATURE], CLEAN_SAMPLE) == 0


@pytest.mark.parametrize(
    "part", ["", "short", "not in the signature at all", "while allocating VIP "]
)
def test_signature_part_is_validated(part: str) -> None:
    with pytest.raises(ValidationError, match="signature_part"):
        GuardConfig(file=REAL_GUARD, signature_part=part)


def test_the_default_part_follows_the_signature() -> None:
    assert GuardConfig(file=REAL_GUARD).detection_part == "while allocating VIP"
    other = GuardConfig(file=REAL_GUARD, signature="address pool exhausted on overlay proxy")
    assert other.detection_part == "address pool exhausted on overlay proxy"


# --- recovery: each evasion the issue lists, on the real layout -------------------------------
EVASIONS = {
    "false-and": "  false && ssh cc-ci 'systemctl restart docker'",
    "true-or": "  true || ssh cc-ci 'systemctl restart docker'",
    "colon-or": "  : || ssh cc-ci 'systemctl restart docker'",
    "exit-and": "  exit 1 && ssh cc-ci 'systemctl restart docker'",
    "if-false": "  if false; then ssh cc-ci 'systemctl restart docker'; fi",
    "if-true-else": "  if true; then :; else ssh cc-ci 'systemctl restart docker'; fi",
    "while-false": "  while false; do ssh cc-ci 'systemctl restart docker'; done",
    "until-true": "  until true; do ssh cc-ci 'systemctl restart docker'; done",
    "constant-test": "  if [ 1 -eq 0 ]; then ssh cc-ci 'systemctl restart docker'; fi",
    "dry-run": "  ssh cc-ci 'systemctl --dry-run restart docker'",
    "status-verb": "  ssh cc-ci 'systemctl status docker restart'",
    "help": "  ssh cc-ci 'systemctl --help restart docker'",
    "version": "  systemctl --version restart docker",
    "lines-eats-the-verb": "  ssh cc-ci 'systemctl -n restart docker'",
    "other-host": "  systemctl -H other restart docker",
    "user-manager": "  ssh cc-ci 'systemctl --user restart docker'",
    "reload-or-restart": "  ssh cc-ci 'systemctl reload-or-restart docker'",
    "remote-false-and": "  ssh cc-ci 'false && systemctl restart docker'",
    "remote-exit-first": "  ssh cc-ci 'exit 0; systemctl restart docker'",
    "never-called": "  restart_docker() { ssh cc-ci 'systemctl restart docker'; }",
    "errexit-false": "  set -e; false; ssh cc-ci 'systemctl restart docker'",
}


@pytest.mark.parametrize("restart", EVASIONS.values(), ids=EVASIONS.keys())
def test_a_restart_that_never_runs_is_refused(tmp_path: Path, restart: str) -> None:
    checks = _checks(_variant(tmp_path, RESTART, restart))
    status, found, detail = checks["guard.recovery"]
    assert status == "fail", restart
    assert found == "no command in the section restarts docker"
    assert restart.strip() in detail, detail  # the finding names the line and why
    assert checks["guard.detects"][0] == "pass"


EARLY_EXITS = {
    "exit": "exit 0",
    "return": "return",
    "exit-after-echo": 'echo "skipping the guard"; exit 0',
    "exec": "exec true",
    "endless-loop": "while true; do sleep 60; done",
    "errexit": "set -eu\nfalse",
    "both-branches-exit": 'if [ -n "$SKIP" ]; then exit 0; else exit 1; fi',
}


@pytest.mark.parametrize("stop", EARLY_EXITS.values(), ids=EARLY_EXITS.keys())
def test_a_restart_after_an_unconditional_exit_is_refused(tmp_path: Path, stop: str) -> None:
    status, _, detail = _checks(_variant(tmp_path, IF_LINE, f"{stop}\n{IF_LINE}"))["guard.recovery"]
    assert status == "fail", stop
    assert "never reached" in detail, detail


def test_an_exit_in_an_earlier_block_stops_the_later_blocks() -> None:
    text = "```sh\nexit 0\n```\n\nthen\n\n```sh\nsystemctl restart docker\n```"
    verdict = judge_recovery(GuardSection("0", 1, text))
    assert verdict.line is None and "exit 0" in verdict.refused[0]


# --- recovery: real forms still count ---------------------------------------------------------
@pytest.mark.parametrize(
    "line",
    [
        "systemctl restart docker",
        "systemctl --no-block restart docker.service",
        "systemctl -q try-restart docker",
        "sudo systemctl restart docker",
        "ssh cc-ci 'systemctl restart docker'",
        "ssh -o BatchMode=yes cc-ci sudo systemctl --no-pager restart docker",
        "service docker restart",
        '[ "$vip" -gt 0 ] && ssh cc-ci "systemctl restart docker"',
        '[ "$vip" -eq 0 ] || systemctl restart docker',
        "test -n \"$vip\" && systemctl restart docker || echo 'restart failed'",
        "systemctl restart docker &",
        "exit 0 | cat; systemctl restart docker",  # a pipeline stage exits its own subshell
        "(exit 0); systemctl restart docker",
        "x=$(exit 0); systemctl restart docker",
        "while true; do systemctl restart docker && break; sleep 5; done",
        "for host in cc-ci; do ssh \"$host\" 'systemctl restart docker'; done",
        'if false; then :; elif [ "$vip" -gt 0 ]; then systemctl restart docker; fi',
        'case "$vip" in 0) ;; *) systemctl restart docker ;; esac',
        "restart_docker() { ssh cc-ci 'systemctl restart docker'; }\n"
        '[ "$vip" -gt 0 ] && restart_docker',
        "f() { return 0; }\nf\nsystemctl restart docker",  # return leaves the function only
        "if ! true; then exit 1; fi\nsystemctl restart docker",
    ],
)
def test_restarts_that_would_run_count(line: str) -> None:
    verdict = judge_recovery(_section(line))
    assert verdict.line is not None, verdict.refused
    assert "restart" in verdict.line


def test_the_real_layout_still_passes_with_the_nested_forms() -> None:
    checks = _checks(REAL_GUARD)
    assert {k: v[0] for k, v in checks.items()} == {
        "guard.section": "pass",
        "guard.detects": "pass",
        "guard.recovery": "pass",
    }
    assert checks["guard.recovery"][1] == "ssh cc-ci 'systemctl restart docker'"
    section = GuardSection("0", 1, f"```bash\n{RESTART.strip()}\n```")
    assert find_recovery(section) == RESTART.strip()


def test_a_quoted_operator_is_a_word_not_an_operator() -> None:
    # bash runs `false` with two arguments here: the restart is one of them, never a command.
    verdict = judge_recovery(_section('false "||" systemctl restart docker'))
    assert verdict.line is None


def test_unreadable_shell_is_refused_and_said_so() -> None:
    verdict = judge_recovery(_section("systemctl restart docker 'unbalanced"))
    assert verdict.line is None and "cannot read" in verdict.refused[0]


@pytest.mark.parametrize(
    "code",
    [
        "(" * 5000 + "systemctl restart docker" + ")" * 5000,
        "if x; then " * 300 + "systemctl restart docker" + "; fi" * 300,
        "x=$(y=$(z=$(w=$(systemctl restart docker))))",
        "f() { f; f; f; systemctl restart docker; }\nf",  # follows each function once at a time
    ],
    ids=["parens", "ifs", "substitutions", "recursion"],
)
def test_hostile_nesting_is_bounded(code: str) -> None:
    start = time.monotonic()
    verdict = judge_recovery(_section(code))
    assert time.monotonic() - start < 2
    if code.startswith("f()"):
        assert verdict.line is not None
    else:
        assert verdict.line is None and "cannot read" in verdict.refused[0]
        assert len(verdict.refused[0]) < 300  # a huge line is clipped in the finding


# --- review bypasses: each confirmed in bash and dash -------------------------------------------
SHADOWED = {
    "function": "systemctl() { :; }\nsystemctl restart docker",
    "ssh": "ssh() { :; }\nssh cc-ci 'systemctl restart docker'",
    "sudo": "sudo() { :; }\nsudo systemctl restart docker",
    "service": "service() { :; }\nservice docker restart",
    "remote-function": "ssh cc-ci 'systemctl() { :; }; systemctl restart docker'",
    "alias": "alias systemctl=true\nsystemctl restart docker",
    "hash": "hash -p /bin/true systemctl\nsystemctl restart docker",
}


@pytest.mark.parametrize("code", SHADOWED.values(), ids=SHADOWED.keys())
def test_a_restart_a_function_or_alias_shadows_is_refused(code: str) -> None:
    verdict = judge_recovery(_section(code))
    assert verdict.line is None, code
    assert "runs instead of the command" in verdict.refused[0], verdict.refused


HEREDOCS = {
    "backslash": "cat <<\\EOF",
    "plain": "cat <<EOF",
    "single-quoted": "cat <<'EOF'",
    "double-quoted": 'cat <<"EOF"',
    "partly-quoted": 'cat <<E"O"F',
    "space": "cat << EOF",
    "dash": "cat <<-EOF",
    "after-a-command": "true; cat <<\\EOF >/dev/null",
}


@pytest.mark.parametrize("opener", HEREDOCS.values(), ids=HEREDOCS.keys())
def test_a_restart_in_any_here_document_is_text(opener: str) -> None:
    body = "systemctl restart docker\n\tEOF" if "<<-" in opener else "systemctl restart docker\nEOF"
    assert judge_recovery(_section(f"{opener}\n{body}")).line is None
    after = judge_recovery(_section(f"{opener}\n{body}\nsystemctl restart docker"))
    assert after.line == "systemctl restart docker"  # the shell reads on after the delimiter


@pytest.mark.parametrize(
    ("code", "runs"),
    [
        # bash and dash join an unquoted body's `\`-newline: that EOF is no delimiter, and
        # `exit 0` is text.
        ("cat <<EOF\nx \\\nEOF\nexit 0\nEOF\nsystemctl restart docker", True),
        # A quoted body keeps it: EOF ends the body and `exit 0` runs.
        ("cat <<'EOF'\nx \\\nEOF\nexit 0\nEOF\nsystemctl restart docker", False),
        # In `(( ))` `<<` is a shift, not a here-document hiding the `exit`.
        ("(( x = 1 << 2 ))\nexit 0\n2\nsystemctl restart docker", False),
    ],
    ids=["unquoted-continuation", "quoted-continuation", "arithmetic-shift"],
)
def test_here_document_edges_follow_the_shell(code: str, runs: bool) -> None:
    verdict = judge_recovery(_section(code))
    assert (verdict.line is not None) == runs, verdict
    assert runs or "`exit 0` always ends the script" in verdict.refused[0]


@pytest.mark.parametrize(
    "test",
    ["[ 1_0 -eq 10 ]", "[ \u0661 -eq 1 ]", "test 1_0 -eq 10", "[ 99999999999999999999 -gt 1 ]"],
    ids=["underscore", "arabic-indic-digit", "test", "past-64-bits"],
)
def test_a_number_sh_does_not_read_is_an_error_so_false(test: str) -> None:
    refused = judge_recovery(_section(f"{test} && systemctl restart docker"))
    assert refused.line is None and "always fails" in refused.refused[0]
    assert judge_recovery(_section(f"{test} || systemctl restart docker")).line is not None


@pytest.mark.parametrize(
    ("cond", "runs"),
    [
        ("[[ x != x* ]]", False),  # a pattern: x matches x*
        ("[[ x == x? ]]", False),
        ("[[ x == x* ]]", True),
        ("[[ x != 'x*' ]]", True),  # quoted: literal, and x is not "x*"
        ("[[ -n x && -z y ]]", False),  # `&&` inside `[[ ]]` is its own operator
        ("! [[ -n x || -n y ]]", False),
        ("[[ abc =~ b ]] && ! true", False),
        ('[[ "$vip" == *[0-9]* ]]', True),  # not fixed: either way
    ],
)
def test_double_bracket_tests_are_read_as_bash_reads_them(cond: str, runs: bool) -> None:
    verdict = judge_recovery(_section(f"{cond} && systemctl restart docker"))
    assert (verdict.line is not None) == runs, verdict


@pytest.mark.parametrize(
    "code",
    [
        "PATH=/nonexistent\nsystemctl restart docker",
        "PATH=/nonexistent systemctl restart docker",
        "export PATH=/tmp/fake:$PATH\nsystemctl restart docker",
        "PATH=/tmp/fake ssh cc-ci 'systemctl restart docker'",
        "PATH=/nonexistent; x=$(systemctl restart docker)",
        "unset PATH; sudo systemctl restart docker",
        "for PATH in /tmp; do systemctl restart docker; done",
    ],
)
def test_a_restart_after_path_changes_is_refused(code: str) -> None:
    verdict = judge_recovery(_section(code))
    assert verdict.line is None and "PATH is changed" in verdict.refused[0], verdict


@pytest.mark.parametrize(
    "code",
    [
        "PATH=$PATH:/usr/local/bin\nsystemctl restart docker",
        'export PATH="${PATH}:/opt/bin"; systemctl restart docker',
        "(PATH=/nonexistent); systemctl restart docker",  # a subshell's PATH is its own
    ],
)
def test_a_path_that_only_appends_or_stays_in_a_subshell_still_counts(code: str) -> None:
    assert judge_recovery(_section(code)).line is not None


DETECT = "grep -c 'while allocating VIP'"
NO_DETECTION = {
    "if-false": f"if false; then journalctl -u docker | {DETECT} </dev/null; fi",
    "false-and": f"false && journalctl -u docker | {DETECT}",
    "stdin-file": f"journalctl -u docker | {DETECT} </dev/null",
    "here-string": f"journalctl -u docker | {DETECT} <<< x",
    "here-document": f"journalctl -u docker | {DETECT} <<EOF\nnothing\nEOF",
    "group-stdin": f"journalctl -u docker | {{ {DETECT}; }} </dev/null",
    "no-pipe": DETECT,
    "other-unit": f"journalctl -u nonexistent-unit | {DETECT}",
    "other-unit-long": f"journalctl --unit=sshd.service | {DETECT}",
    "other-unit-ssh": f'ssh cc-ci "journalctl -u cron | {DETECT}"',
    "user-journal": f"journalctl --user -u docker | {DETECT}",
    "shadowed-grep": f"grep() {{ echo 1; }}\njournalctl -u docker | {DETECT}",
}


@pytest.mark.parametrize("code", NO_DETECTION.values(), ids=NO_DETECTION.keys())
def test_a_grep_that_never_reads_the_docker_journal_is_no_detection(code: str) -> None:
    detection, refused = judge_detection(_section(code), VIP_SIGNATURE)
    assert detection is None, detection
    assert refused and "while allocating VIP" in refused[0], refused


@pytest.mark.parametrize(
    "code",
    [
        f"journalctl -u docker.service | {DETECT}",
        f"journalctl --unit docker --since today | {DETECT}",
        f"journalctl -fu docker | {DETECT}",
        f"journalctl -u 'docker*' | {DETECT}",
        f"ssh cc-ci journalctl -u docker | {DETECT}",
        f'vip=$(ssh cc-ci "journalctl -u docker | {DETECT}")',
        f"journalctl -u docker \\\n  | {DETECT}",
        f"docker logs allocator 2>&1 | {DETECT}",
        f"cat /var/log/docker.log | {DETECT}",
        f"count() {{ {DETECT}; }}\njournalctl -u docker | count",
    ],
)
def test_a_grep_over_the_docker_journal_is_a_detection(code: str) -> None:
    detection, refused = judge_detection(_section(code), VIP_SIGNATURE)
    assert detection is not None and detection.grep == ["grep", "-c", "while allocating VIP"]
    assert refused == ()


def test_a_detection_over_another_units_journal_fails_the_stage_and_says_why(
    tmp_path: Path,
) -> None:
    path = _variant(tmp_path, "journalctl -u docker", "journalctl -u nonexistent-unit")
    status, found, detail = _checks(path)["guard.detects"]
    assert (status, found) == ("fail", "no detection command in the section")
    assert "the journal of nonexistent-unit, not of docker" in detail, detail
