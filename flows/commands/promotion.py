"""python -m flows promote | rollback | promotions: the registry's promotion state by hand.

The registry holds which revision is promoted (model/registry_state.py); every API replica
that follows it swaps within its reload interval. Without a registry (an embedded one never
started), promote writes this host's record beside the BentoML store, as on one machine.
"""

from __future__ import annotations

import argparse


def add_promotion_commands(sub: argparse._SubParsersAction) -> None:
    """Register promote, rollback and promotions."""
    promote = sub.add_parser("promote", help="make a published revision (a model tag or a top "
                                             "hash) the promoted one; an older one rolls back")
    promote.add_argument("tag", help="name:version of the model, or a (short) top hash")
    rollback = sub.add_parser("rollback", help="promote again the revision the promoted one "
                                               "replaced, and mark that one rolled back")
    listing = sub.add_parser("promotions", help="which revision is promoted, and the history")
    listing.add_argument("--last", type=int, default=10, help="history lines shown")
    for parser in (promote, rollback, listing):
        add_registry_flags(parser)


def add_registry_flags(parser: argparse.ArgumentParser) -> None:
    """--workspace, --registry and --package: where a command finds the promotion state."""
    parser.add_argument("--workspace", help="else OPENIMAGER_WORKSPACE, ./workspace")
    parser.add_argument("--registry", help="else OPENIMAGER_REGISTRY (embedded, s3://...)")
    parser.add_argument("--package", dest="package_name",
                        help="else OPENIMAGER_PACKAGE_NAME, openimager/classifier")


def run_promotion_command(args: argparse.Namespace) -> int:
    """Run promote, rollback or promotions."""
    from flows.promotion.registry import has_registry, registry_of
    from flows.run.params import settings_from

    settings = settings_from(workspace=args.workspace, registry=args.registry,
                             package_name=args.package_name)
    if not has_registry(settings):
        if args.command == "promote":
            return promote_locally(args.tag)
        if args.command == "promotions":
            print(f"no registry in {settings.registry_dir}: nothing was ever published there")
            return 0
        from flows.commands.errors import UsageError

        raise UsageError(f"no registry in {settings.registry_dir}: nothing was ever published "
                         "there, so there is nothing to roll back to (--registry names another)")
    from flows.promotion.registry import promote_by_hand, rollback

    with registry_of(settings) as registry:
        where = f"{registry.package} in {registry.url}"
        if args.command == "promotions":
            print("\n".join(listing(registry.state()[0], where, args.last)))
            return 0
        if args.command == "promote":
            new, before = promote_by_hand(registry, args.tag)
        else:
            new, before = rollback(registry)
        cached = follow_locally(new, registry.url)
    print(f"{where}: promoted {new['tag']} (revision {new['top_hash'][:12]}); "
          + replaced_words(new, before))
    print("every API replica that follows the registry serves it within its reload interval"
          + ("; so does a server on this host's BentoML store" if cached else ""))
    return 0


def follow_locally(new: dict, registry: str) -> bool:
    """Write this host's record too when its store holds the model, so a server that reads
    the store (one machine, the demo) follows; True if it was written."""
    from flows.promotion.bentoml_store import promote, stored_model_file

    if stored_model_file(new["tag"]) is None:
        return False
    promote(new["tag"], reason=new.get("reason"), package=new.get("package"),
            registry=registry, top_hash=new["top_hash"])
    return True


def replaced_words(new: dict, before: dict | None) -> str:
    """What a promotion replaced, in words."""
    if before is None:
        return "nothing was promoted before"
    if before.get("top_hash") == new.get("top_hash"):
        return "it already was the promoted revision"
    return f"replaced {before['tag']} ({before['top_hash'][:12]})"


def listing(state: dict, where: str, last: int) -> list[str]:
    """The promoted revision and the last history lines, in words."""
    current = state.get("promoted")
    lines = [f"{where}: " + (f"promoted {current['tag']} (revision {current['top_hash']}) "
                             f"since {current.get('promoted_at')} by {current.get('by')}"
                             if current else "nothing promoted")]
    if current and current.get("reason"):
        lines.append(f"  why: {current['reason']}")
    for seen in state.get("history", [])[-last:]:
        revision = f" ({seen['top_hash'][:12]})" if seen.get("top_hash") else ""
        lines.append(f"  {seen.get('at')} {seen.get('action')} {seen.get('tag')}{revision} "
                     f"by {seen.get('by')}" + (f": {seen['reason']}" if seen.get("reason")
                                               else ""))
    return lines


def promote_locally(tag: str) -> int:
    """Write this host's promotion record of a stored model (no registry to write to)."""
    from flows.promotion.bentoml_store import promote_stored  # BentoML loads only here

    record, before = promote_stored(tag)
    if before is None:
        replaced = "nothing was promoted before"
    elif before["tag"] == record["tag"]:
        replaced = "it already was the promoted model"
    else:
        replaced = f"replaced {before['tag']}"
    print(f"promoted {record['tag']} ({replaced})")
    print(f"published as {record['package']}@{record['top_hash'][:12]} in {record['registry']}"
          if record.get("top_hash") else "no published package revision of it is known")
    print(f"its Bento: {record['bento']}" if record.get("bento") else
          "no Bento of it is known: `bentoml build` packs it")
    return 0
