"""Command ``m3 ask``: ask the memory a question about a view; a VLM answers from rendered tokens.

Reads ``params.yaml: ask``. Not a DVC stage. The memory renders the ``ask.model`` features
(``llamav``: a VLM's image tokens) at a registered view (``--view``) or any camera (``--pose``),
and the VLM whose tokens were stored reads them in place of its own vision tokens and answers
(greedy); ``--region`` (a pixel box ``x0,y0,x1,y1`` or a text) keeps only the tokens of that
region (:mod:`pipeline.query.ask`). Prints the answer and writes, in
``data/<scene>/ask/<view>-<question>[-in-<region>]/`` unless ``--out`` is given (a new or empty
folder, or an earlier output of ``m3 ask``)::

    render.png     the RGB render of the camera
    region.png     the render with the cells outside the region darkened (with --region)
    answer.json    question, answer, camera, region, tokens read, model, checkpoint
"""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.query.config import AskConfig
from stages.command import PARAMS, SCENE_HELP, Options, command, resolve_scene


@command(AskConfig)
def cli(
    options: Options[AskConfig],
    scene: str = typer.Argument(..., help=SCENE_HELP),
    question: str = typer.Argument(..., help='what to ask, e.g. "What is on the table?"'),
    view: str | None = typer.Option(None, help="image name of a registered view (default: the first)"),
    pose: Path | None = typer.Option(
        None, help='a novel camera: JSON {"w2c": 4x4 world-to-camera, "K": 3x3, "width", "height"} (K, size optional)'
    ),
    region: str | None = typer.Option(
        None, help='only this region: a pixel box "x0,y0,x1,y1" or a text found by a language model of the memory'
    ),
    out: Path | None = typer.Option(
        None, help="output folder: new, empty or an earlier m3 ask output (default: data/<scene>/ask/<view>-<question>)"
    ),
    params: Path = PARAMS,
) -> None:
    """Ask the memory a question about a view: the VLM reads the memory's rendered image tokens and answers.

    Prints the answer and saves it (answer.json) with the rendered view (render.png).
    """
    from pipeline.query.ask import ask

    result, out = ask(options.load("ask", params), resolve_scene(scene), question, view, pose, region, out)
    where = f"{result['camera']['view']}; {result['image_tokens']} image tokens; saved in {out}"
    print(f"Q: {question}\nA: {result['answer']}\n({where})")
