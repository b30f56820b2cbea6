"""Polls as Element shows them (MSC3381, unstable names, as Element Web/X/Android send them).

The event shapes follow matrix-js-sdk `src/extensible_events_v1/PollStartEvent.ts`,
`PollResponseEvent.ts` and `PollEndEvent.ts`: a start carries the question and the answers under
`org.matrix.msc3381.poll.start`, plus a plain-text fallback (`org.matrix.msc1767.text`) with the
numbered choices, which clients without polls show and which lets a clinician type « 2 ». A vote
is an `…poll.response` referencing the start (`m.relates_to` rel_type `m.reference`); an end is
an `…poll.end` referencing it too. Answer ids are the 1-based positions: a typed « 2 » and a vote
for answer « 2 » mean the same.
"""
from __future__ import annotations

POLL_START = "org.matrix.msc3381.poll.start"
POLL_RESPONSE_TYPES = ("org.matrix.msc3381.poll.response", "m.poll.response")
POLL_END = "org.matrix.msc3381.poll.end"
TEXT = "org.matrix.msc1767.text"
DISCLOSED = "org.matrix.msc3381.poll.disclosed"
MAX_ANSWERS = 20  # clients show at most 20 (PollStartEvent.ts: answers.slice(0, 20))

__all__ = ["MAX_ANSWERS", "POLL_END", "POLL_RESPONSE_TYPES", "POLL_START", "fallback_text",
           "poll_end_content", "poll_response", "poll_start_content"]


def fallback_text(question: str, choices: list[str]) -> str:
    return question + "\n" + "\n".join(f"{i}. {choice}" for i, choice in enumerate(choices, 1))


def poll_start_content(question: str, choices: list[str], *, max_selections: int = 1,
                       relates_to: dict | None = None) -> dict:
    if not 1 <= len(choices) <= MAX_ANSWERS:
        raise ValueError(f"un sondage a de 1 à {MAX_ANSWERS} choix, pas {len(choices)}")
    if not 1 <= max_selections <= len(choices):
        raise ValueError("max_selections hors des choix proposés")
    text = fallback_text(question, choices)
    content = {
        POLL_START: {
            "question": {TEXT: question, "body": question, "msgtype": "m.text"},
            "kind": DISCLOSED,
            "max_selections": max_selections,
            "answers": [{"id": str(i), TEXT: choice} for i, choice in enumerate(choices, 1)],
        },
        TEXT: text,
        "body": text,  # clients that know neither polls nor extensible events
    }
    if relates_to:
        content["m.relates_to"] = relates_to
    return content


def poll_end_content(poll_event_id: str, text: str) -> dict:
    return {"m.relates_to": {"rel_type": "m.reference", "event_id": poll_event_id},
            POLL_END: {}, TEXT: text, "body": text}


def poll_response(event_type: str, content: dict) -> tuple[str, list[str]] | None:
    """(poll start event id, answer ids) of a vote, or None when the event is not a vote.
    An empty list is a withdrawn (« spoiled ») vote."""
    if event_type not in POLL_RESPONSE_TYPES:
        return None
    relates = content.get("m.relates_to") or {}
    if relates.get("rel_type") != "m.reference" or not isinstance(relates.get("event_id"), str):
        return None
    body = content.get(event_type) or content.get("org.matrix.msc3381.poll.response") or {}
    answers = body.get("answers") if isinstance(body, dict) else None
    if not isinstance(answers, list):
        return relates["event_id"], []
    return relates["event_id"], [a for a in answers if isinstance(a, str)]
