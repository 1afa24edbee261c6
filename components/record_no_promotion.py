"""record_no_promotion: the Else branch: why the champion stays (a Markdown the UI shows)."""

from kfp.dsl import Markdown, Output

from components.image import depth_component


@depth_component
def record_no_promotion(run_id: str, reason: str, note: Output[Markdown]):
    from depth_common.cli.startup import record_startup

    record_startup("record_no_promotion")
    with open(note.path, "w") as fh:
        fh.write(f"# Not promoted\n\nRun `{run_id}` was not promoted: {reason}\n")
    note.metadata["reason"] = reason
    print(f"not promoted: {reason}")
