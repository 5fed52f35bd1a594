"""`alliance member import`: the member home's loan book, fed UDS-1 files."""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from alliance import db, matching_key, uds1
from alliance.errors import UsageError
from alliance_member import importer, store
from alliance_member.home import MemberHome

ProgressFactory = Callable[[], AbstractContextManager[Callable[[int], None]]]


def import_book(
    home_dir: Path,
    file: Path,
    kind: str,
    *,
    db_url: str | None = None,
    skip_invalid: bool = False,
    snapshot: bool = False,
    reject_file: Path | None = None,
    on_error: Callable[[uds1.RowError], None] | None = None,
    progress: AbstractContextManager[Callable[[int], None]] | None = None,
    dry_run: bool = False,
    allow_shrink: bool = False,
) -> importer.ImportResult:
    importer.check_arguments(file, kind, skip_invalid=skip_invalid, snapshot=snapshot, reject_path=reject_file)
    home = MemberHome(home_dir)
    cfg = home.config()
    if cfg.role != "member":
        raise UsageError(f"{home_dir} is an {cfg.role} home; only members hold a loan book")
    if not home.matching_key.exists():
        raise UsageError("no matching key installed: tokens cannot be made (run `alliance member matching-key install`)")
    mk = matching_key.load(home.matching_key)
    engine = db.make_engine(home.db_url(db_url))
    store.create_schema(engine)
    with progress or nullcontext(None) as advance:
        return importer.import_file(
            engine, file, kind, mk, skip_invalid=skip_invalid, snapshot=snapshot,
            reject_path=reject_file, on_error=on_error, on_progress=advance, dry_run=dry_run,
            allow_shrink=allow_shrink,
        )
