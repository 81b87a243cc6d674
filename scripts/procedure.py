#!/usr/bin/env python3
"""Runs a verification procedure written in Markdown, as a person following it would.

The document is the script: its steps (`**1.2 Title.**`) hold ```sh blocks, run in the
document's order in one bash (so a variable set in one step is there in the next), each
followed by its ```text block, the output a person should see. Info-string words after the
language narrow a block: `cni` or `netavark` (only on that backend), `excerpt` (the text's lines
appear in this order among the output's; without it, the output is exactly the text). In an
expected line, `<words in angle brackets>` stands for what must vary (times, keys, pids, byte
counts) and a run of spaces for any run of spaces (columns widen with their values).

    procedure.py DOCUMENT --backend cni|netavark       run it; exit 1 at the first failing step
    procedure.py DOCUMENT --backend B --print         print the bash script it would run

A failing command or an output that does not match stops the run, naming the step; the
document's cleanup steps (under a `## ... Cleanup` heading) then run, errors ignored, so that a
failed run leaves the machine as a finished one does.
"""
import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile

STEP = re.compile(r"^\*\*(\d+\.\d+) ([^*]*)")
PLACEHOLDER = re.compile(r"<[a-z][a-z0-9 ,'/_-]*>")
BACKENDS = ("cni", "netavark")


class Block:
    def __init__(self, step, title, kind, words, lines, cleanup):
        self.step, self.title, self.kind = step, title, kind
        self.backend = next((w for w in words if w in BACKENDS), None)
        self.excerpt = "excerpt" in words
        self.lines, self.cleanup = lines, cleanup

    def applies(self, backend):
        return self.backend in (None, backend)


def blocks(path):
    """The document's fenced sh and text blocks, each with the step it belongs to."""
    found, step, title, cleanup = [], None, "", False
    fence, words, lines = None, [], []
    with open(path, encoding="utf-8") as document:
        for line in document.read().splitlines():
            if fence is not None:
                if line.strip() == "```":
                    found.append(Block(step, title, fence, words, lines, cleanup))
                    fence = None
                else:
                    lines.append(line)
                continue
            if line.startswith("## "):
                cleanup = "cleanup" in line.lower() or "後片付け" in line
            if (match := STEP.match(line)):
                step, title = match.group(1), match.group(2).rstrip(".")
            if line.startswith("```") and line[3:].split()[:1] in (["sh"], ["text"]):
                fence, *words = line[3:].split()
                lines = []
    return found


def to_pattern(expected):
    parts = PLACEHOLDER.split(expected.strip())
    parts = [r"\s+".join(re.escape(w) for w in part.split(" ")) for part in parts]
    return re.compile(r"\s*" + r".+?".join(parts) + r"\s*")


def mismatch(expected_lines, output, excerpt):
    """None if the output shows what the document says, else what differs."""
    got = [l for l in output.splitlines() if l.strip()]
    want = [l for l in expected_lines if l.strip()]
    if not excerpt:
        for i, line in enumerate(want):
            if i >= len(got):
                return f"missing line {i + 1}: {line!r}"
            if not to_pattern(line).fullmatch(got[i]):
                return f"line {i + 1}: expected {line!r}, got {got[i]!r}"
        if len(got) > len(want):
            return f"unexpected line {len(want) + 1}: {got[len(want)]!r}"
        return None
    at = 0
    for line in want:
        pattern = to_pattern(line)
        while at < len(got) and not pattern.fullmatch(got[at]):
            at += 1
        if at == len(got):
            return f"no line (in this order) matching {line!r}"
        at += 1
    return None


def script(document, backend, work):
    """The bash script that runs the document's steps and checks their output."""
    me = shlex.quote(os.path.abspath(__file__))
    out = []
    cleanup = []
    pending_output = None
    for n, block in enumerate(b for b in blocks(document) if b.applies(backend)):
        if block.kind == "sh":
            output = f"{work}/{n}.out"
            body = "\n".join(block.lines)  # as a person pastes it, comments too
            if block.cleanup:
                cleanup.append(body)
            out.append(f"current={shlex.quote(block.step + ' ' + block.title)} output={output}")
            out.append(f"printf '\\n== step %s\\n' \"$current\"")
            out.append(f"{{\n{body}\n}} > {output} 2>&1 < /dev/null")
            out.append(f"cat {output}; output=/dev/null  # shown: a failure need not show it again")
            pending_output = output
        else:
            if pending_output is None:
                sys.exit(f"{document}: step {block.step}: an expected output before any command")
            expected = f"{work}/{n}.expected"
            with open(expected, "w", encoding="utf-8") as f:
                f.write("\n".join(block.lines) + "\n")
            mode = "--excerpt" if block.excerpt else "--whole"
            out.append(f"python3 {me} --compare {expected} {pending_output} {mode}")
    head = [
        "set -e -o pipefail",
        # The trap runs inside a step's redirection: fd 3 is the terminal's stderr.
        "exec 3>&2",
        "current=start output=/dev/null",
        "cleanup() {",
        "  set +e",
        *[f"  {{\n{body}\n}} > /dev/null 2>&1 < /dev/null" for body in cleanup],
        "}",
        "trap 'status=$?; if [ $status -ne 0 ]; then { cat \"$output\"; "
        "printf \"\\nFAILED at step %s (exit %s)\\n\" \"$current\" \"$status\"; } >&3; "
        "cleanup; fi' EXIT",
    ]
    return "\n".join(head + out + ["printf '\\nevery step passed\\n'"]) + "\n"


def compare(expected_file, output_file, excerpt):
    with open(expected_file, encoding="utf-8") as f:
        expected = f.read().splitlines()
    with open(output_file, encoding="utf-8", errors="replace") as f:
        output = f.read()
    why = mismatch(expected, output, excerpt)
    if why:
        print(f"the output differs from the document's: {why}", file=sys.stderr)
        return 1
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("document", nargs="?")
    parser.add_argument("--backend", choices=BACKENDS, default="cni")
    parser.add_argument("--print", action="store_true", help="print the script, run nothing")
    parser.add_argument("--compare", nargs=2, metavar=("EXPECTED", "OUTPUT"))
    parser.add_argument("--excerpt", action="store_true")
    parser.add_argument("--whole", action="store_true")
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare, args.excerpt)
    with tempfile.TemporaryDirectory(prefix="flatnet-procedure.") as work:
        text = script(args.document, args.backend, work)
        if args.print:
            print(text, end="")
            return 0
        return subprocess.run(["bash", "-c", text], check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
