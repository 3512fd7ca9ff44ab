"""``POST /scenes/{scene}/ask``: a question about a registered view, answered by the memory's VLM.

:func:`pipeline.query.ask.answer_question` (render the VLM tokens at the view, keep a region's
cells, let the VLM read them) on a warm scene's loaded memory, without the output folder: the
answer is ``answer.json``'s content, for a registered view (no pose file).
"""

from __future__ import annotations

from typing import Any

from pipeline.core.errors import M3Error
from pipeline.query.ask import answer_question
from pipeline.query.config import AskConfig
from stages.server.pool import Conflict, WarmScene


def ask_view(warm: WarmScene, config: AskConfig, question: str, view: str | None, region: str | None) -> dict[str, Any]:
    """Answer ``question`` about registered ``view`` (None: the first) of ``warm``'s memory,
    optionally about ``region`` only (a pixel box ``x0,y0,x1,y1`` or a text); call with the lock held."""
    if not question.strip():
        raise M3Error("ask: the question is empty; e.g. 'What is on the table?'")
    memory = warm.memory
    if config.model not in memory.models:
        raise Conflict(
            f"ask: {warm.scene.name}'s memory holds no '{config.model}' ({', '.join(memory.models)}); "
            f"train it with {config.model} among its models to ask questions"
        )
    camera = warm.view(view) if view is not None else warm.views[0]
    return answer_question(memory, warm.scene, config, question, camera, camera, region, warm.device)[0]
