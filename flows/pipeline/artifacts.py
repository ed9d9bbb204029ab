"""What a flow run leaves for people to look at: a markdown report and tables in Prefect.

The report is built by pure functions from the stages' summaries; `record` hands it to
Prefect. Pictures (confusion matrix, sample grid) are embedded as small data URIs, so the
report shows them wherever it is read, whether or not the workspace is reachable from there.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image

from flows.watching.datachecks import markdown

IMAGE_SIDE = 640  # embedded pictures are shrunk to this longest side


def inline_image(path: Path, side: int = IMAGE_SIDE) -> str | None:
    """A PNG as a markdown image with a data URI, shrunk to side; None if it is missing."""
    if not path.exists():
        return None
    with Image.open(path) as image:
        image.thumbnail((side, side))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f"![{path.stem.replace('_', ' ')}](data:image/png;base64,{data})"


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]


def refresh_section(refreshed: dict) -> list[str]:
    """Selection counts per class and download statuses."""
    rows = [[name, info["mid"], info["images"], info["boxes"]]
            for name, info in refreshed["classes"].items()]
    downloads = ", ".join(f"{k} {v}" for k, v in sorted(refreshed["downloads"].items()))
    return ["## Selection", "", *_table(["class", "MID", "images", "boxes"], rows), "",
            f"{refreshed['images']} images, {refreshed['boxes']} boxes; "
            f"downloads: {downloads or 'none'}", ""]


def dataset_section(built: dict, grid: str | None) -> list[str]:
    """Crops per class and split, what was skipped, and the sample grid."""
    splits = sorted(built["crops_per_split"])
    per = built.get("crops_per_class_split", {})
    rows = [[name, count, *[per.get(name, {}).get(s, "") for s in splits]]
            for name, count in built["crops_per_class"].items()]
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(built["skipped"].items())) or "none"
    feedback = built.get("feedback_crops")
    extra = f"; {feedback} of them from labelled served images (train split only)" \
        if feedback else ""
    lines = ["## Dataset", "", *_table(["class", "crops", *splits], rows), "",
             f"{built['crops']} crops from {built['images']} images "
             f"(dataset {built['dataset_id']}){extra}; skipped boxes: {skipped}", ""]
    if built.get("feedback_screen"):
        lines += [screened_line(built["feedback_screen"]), ""]
    return [*lines, grid, ""] if grid else lines


def screened_line(screened: dict) -> str:
    """The labelled served images the feedback screen kept out of training."""
    capped = ", ".join(f"{k} {v}" for k, v in sorted(screened["over_cap"].items()))
    return (f"Feedback kept out of training: {screened['near_duplicates']} near-duplicates of "
            f"validation or test crops; over the cap per class: {capped or 'none'}.")


def train_section(trained: dict, confusion: str | None,
                  reliability: str | None = None) -> list[str]:
    """Test metrics with their intervals, calibration, the promotion decision, the confusion
    matrix and the reliability diagram."""
    from model.intervals import holdout_line, stated

    metrics = trained["metrics"]
    verdict = "promoted" if trained["promoted"] else "NOT promoted"
    reused = " (reused: already trained on this dataset with this config)" \
        if trained.get("reused") else ""
    lines = ["## Model", "",
             f"`{trained['model_tag']}`{reused}: test accuracy {stated(metrics, 'accuracy')}, "
             f"macro F1 {stated(metrics, 'macro_f1')}, ROC-AUC {stated(metrics, 'roc_auc')} "
             f"on {metrics['test_examples']} held-out crops (95 % intervals: bootstrap over "
             "the test photos).", ""]
    if holdout_line(metrics):
        lines += [f"Holdout{holdout_line(metrics).removeprefix('holdout')}.", ""]
    if metrics.get("calibration"):
        from model.report import NOT_FITTED

        found = metrics["calibration"]
        how = "fitted on validation" if found.get("identifiable", True) else \
            f"not fitted: {NOT_FITTED}"
        lines += [f"Calibration: temperature {found['temperature']} ({how}); "
                  f"test ECE {found['ece_before']} before, {found['ece_after']} after.", ""]
    lines += [f"**{verdict}**: {trained['promotion_reason']}", ""]
    return [*lines, *(p for image in (confusion, reliability) if image for p in (image, ""))]


def publish_section(published: dict | None, trained: dict | None) -> list[str]:
    """Where the package went, or why nothing was published."""
    if published is None:
        why = "the model was not promoted" if trained and not trained["promoted"] else "skipped"
        return ["## Package", "", f"Not published: {why}; the registry keeps the last "
                "promoted package.", ""]
    state = "new revision" if published.get("pushed", True) else "unchanged, no new revision"
    return ["## Package", "", f"`{published['name']}` in {published['registry']}: top hash "
            f"`{published['top_hash']}` ({state})", ""]


def promotion_section(promotion: dict | None, bento: dict | None) -> list[str]:
    """What the service loads next after this run, and the Bento built of it."""
    if promotion is None:
        return ["## Promotion", "", "No promotion recorded: the service keeps its model.", ""]
    where = f"published as `{promotion['package']}` top hash `{promotion['top_hash']}`" \
        if promotion.get("top_hash") else "not published"
    lines = ["## Promotion", "", f"`{promotion['tag']}` is the promoted model (replaced "
             f"`{promotion.get('replaced')}`), {where}.", ""]
    if bento is None:
        return [*lines, "No Bento built (OPENIMAGER_BUILD_BENTO is off).", ""]
    if bento.get("tag"):
        return [*lines, f"Bento `{bento['tag']}` packs it.", ""]
    return [*lines, f"**The Bento build failed** (the promotion stands): {bento['error']}", ""]


def drift_section(summary: dict | None, chart: str | None) -> list[str]:
    """Traffic since the last promotion against the test split, test by test."""
    if summary is None:
        return ["## Drift", "", "Not measured (no dataset or prediction log).", ""]
    rows = [[t["name"], t["traffic"], t["reference"], t["test"],
             "n/a" if t["p_value"] is None else f"{t['p_value']:.3g}",
             "**yes**" if t["drift"] else "no"] for t in summary["tests"]]
    fb = summary["feedback"]
    lines = ["## Drift", "", f"{summary['requests']} requests to `{summary['model']}` since "
             f"{summary['since'] or 'the log began'}; class mix compared with "
             f"{summary['class_mix_of']}.", "",
             *_table(["figure", "traffic", "reference", "test", "p-value", "drift"], rows), "",
             f"Feedback: {fb['labelled']} labelled requests, accuracy {fb['accuracy']}.", ""]
    if summary.get("unsure"):
        found = summary["unsure"]
        lines += [f"Unsure answers (top probability under {found['threshold']}): "
                  f"{found['count']} (share {found['share']}).", ""]
    return [*lines, chart, ""] if chart else lines


def classification_rows(metrics: dict) -> list[dict]:
    """The per-class test metrics as table rows, each figure's interval beside it (bootstrap
    over the test photos) when they were recorded."""
    from model.intervals import CONFIDENCE, span

    found = metrics.get("intervals") or {}
    share = found.get("confidence", CONFIDENCE)
    rows = []
    for name, values in metrics["per_class"].items():
        bounds = (found.get("per_class") or {}).get(name)
        row = {"class": name}
        for key, value in values.items():
            row[key] = value
            if bounds and key in bounds:  # precision, recall and f1; support has none
                row[f"{key} {share:.0%} CI"] = span(bounds[key]) if bounds[key] else None
        rows.append(row)
    return rows


def shadow_section(shadow: dict) -> list[str]:
    """The gate's shadow replay on the kept uploads: its figures and the flip matrix."""
    from flows.watching.shadow import report_lines

    lines = ["## Shadow replay", "", *[f"- {line}" for line in report_lines(shadow)], ""]
    flips = shadow.get("flips") or {}
    if flips:
        labels = sorted({b for row in flips.values() for b in row} | set(flips))
        rows = [[a, *[flips.get(a, {}).get(b, 0) for b in labels]] for a in sorted(flips)]
        lines += ["Uploads by the promoted model's label (rows) and the candidate's (columns):",
                  "", *_table(["promoted / candidate", *labels], rows), ""]
    return lines


def report(title: str, result: dict, images: dict[str, Path]) -> str:
    """The markdown report of a run from the summaries in result (refresh, dataset, train,
    publish, promotion and bento; whichever ran) and the pictures in images (sample_grid,
    confusion_matrix)."""
    lines = [f"# {title}", ""]
    if "refresh" in result:
        lines += refresh_section(result["refresh"])
    if "dataset" in result:
        lines += dataset_section(result["dataset"], inline_image(images["sample_grid"])
                                 if "sample_grid" in images else None)
    if "datachecks" in result:
        lines += [*markdown(result["datachecks"]).splitlines(), ""]
    if "drift" in result:
        lines += drift_section(result["drift"], inline_image(images["drift"])
                               if "drift" in images else None)
    if "train" in result:
        lines += train_section(result["train"], inline_image(images["confusion_matrix"])
                               if "confusion_matrix" in images else None,
                               inline_image(images["reliability"])
                               if "reliability" in images else None)
    shadow = (result.get("train") or {}).get("promotion", {}).get("shadow")
    if shadow:
        lines += shadow_section(shadow)
    if "publish" in result:
        lines += publish_section(result["publish"], result.get("train"))
    if "promotion" in result:
        lines += promotion_section(result["promotion"], result.get("bento"))
    return "\n".join(lines)


def record(flow: str, result: dict, images: dict[str, Path]) -> None:
    """Create the run's artifacts in Prefect: the report, and the classification report table
    when a model was trained. Keys are per flow, so the UI shows each flow's history."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_markdown_artifact(report(f"openimager {flow}", result, images),
                             key=f"openimager-{flow}-report",
                             description=f"What the {flow} run selected, built, scored and "
                                         "published")
    if "train" in result:
        trained = result["train"]
        create_table_artifact(classification_rows(trained["metrics"]),
                              key=f"openimager-{flow}-classification",
                              description=f"Per-class test metrics of {trained['model_tag']}")


def record_checks(report: dict) -> None:
    """The data checks' report as its own Prefect artifact, so a stopped run shows it too."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(markdown(report), key="openimager-datachecks",
                             description="The new dataset's data checks against the promoted "
                                         "model's dataset")
