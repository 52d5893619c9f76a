"""Import the saved Thyme-RL dashboard (launch/wandb_dashboard.yaml) into a W&B project as a workspace.

    python -m launch.wandb_dashboard --entity ENTITY [--project thyme-rl]      # prints the workspace URL
    python -m launch.wandb_dashboard --entity ENTITY --print                   # the panels, nothing sent

Needs a W&B login (`wandb login` or WANDB_API_KEY); wandb-workspaces comes with the install.
The definition is plain YAML so it can be reviewed and edited in the repository; every key in it is
one the trainers or launch.eval log.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFINITION = Path(__file__).with_name("wandb_dashboard.yaml")


def load_definition(path: Path = DEFINITION) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def panel_keys(definition: dict) -> list[str]:
    """Every metric or table key the dashboard shows."""
    keys = []
    for section in definition["sections"]:
        for panel in section["panels"]:
            keys += panel.get("y", []) + panel.get("metrics", []) + ([panel["table"]] if "table" in panel else [])
    return keys


def build_workspace(definition: dict, entity: str, project: str):
    """The wandb_workspaces Workspace for the definition (built offline; `.save()` sends it)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    def panel(spec: dict):
        kind = spec["kind"]
        if kind == "line":
            return wr.LinePlot(title=spec["title"], x="Step", y=list(spec["y"]))
        if kind == "bar":
            return wr.BarPlot(title=spec["title"], metrics=list(spec["metrics"]))
        if kind == "table":
            return wr.WeavePanelSummaryTable(table_name=spec["table"])
        raise ValueError(f"{DEFINITION}: panel kind {kind!r} is not line, bar or table")

    sections = [ws.Section(name=s["name"], panels=[panel(p) for p in s["panels"]], is_open=True)
                for s in definition["sections"]]
    return ws.Workspace(entity=entity, project=project, name=definition["name"], sections=sections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entity", required=True, help="your W&B user or team")
    parser.add_argument("--project", default="thyme-rl", help="the project the runs log to (logging.project)")
    parser.add_argument("--print", dest="print_only", action="store_true", help="list the panels; send nothing")
    args = parser.parse_args(argv)
    try:
        workspace = build_workspace(load_definition(), args.entity, args.project)
    except ImportError:
        raise SystemExit("the dashboard import needs wandb-workspaces: pip install -c constraints.txt -e . (or make setup)")
    if args.print_only:
        for section in workspace.sections:
            print(f"{section.name}: {', '.join(getattr(p, 'title', None) or getattr(p, 'table_name', '') for p in section.panels)}")
        return 0
    try:
        workspace.save()
    except Exception as exc:  # noqa: BLE001 - network, login and permission errors all end here
        raise SystemExit(f"saving the workspace to {args.entity}/{args.project} failed: {exc}; check `wandb login` "
                         "and that the project exists (it does once a run has logged to it)") from None
    print(f"saved: {workspace.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
