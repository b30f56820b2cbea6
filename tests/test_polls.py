"""Poll events in the shapes Element sends and reads: matrix-js-sdk
src/extensible_events_v1/PollStartEvent.ts (serialize), PollResponseEvent.ts, PollEndEvent.ts."""
import pytest

from domain.polls import POLL_END, POLL_START, poll_end_content, poll_response, poll_start_content
from rooms.messages import file_payload


def test_poll_start_has_the_unstable_names_numbered_fallback_and_positional_ids():
    content = poll_start_content("Mode du rendez-vous ?", ["Cabinet", "Domicile", "Visio"])
    start = content[POLL_START]
    assert POLL_START == "org.matrix.msc3381.poll.start"
    assert start["kind"] == "org.matrix.msc3381.poll.disclosed" and start["max_selections"] == 1
    assert start["question"]["org.matrix.msc1767.text"] == "Mode du rendez-vous ?"
    assert start["answers"] == [{"id": "1", "org.matrix.msc1767.text": "Cabinet"},
                                {"id": "2", "org.matrix.msc1767.text": "Domicile"},
                                {"id": "3", "org.matrix.msc1767.text": "Visio"}]
    # PollStartEvent.serialize: question, then "1. answer" lines
    assert content["org.matrix.msc1767.text"] == "Mode du rendez-vous ?\n1. Cabinet\n2. Domicile\n3. Visio"


def test_poll_limits():
    with pytest.raises(ValueError):
        poll_start_content("?", [])
    with pytest.raises(ValueError):
        poll_start_content("?", [str(i) for i in range(21)])
    with pytest.raises(ValueError):
        poll_start_content("?", ["a"], max_selections=2)


def test_votes_are_read_as_element_sends_them_and_anything_else_is_not_a_vote():
    vote = {"m.relates_to": {"rel_type": "m.reference", "event_id": "$start"},
            "org.matrix.msc3381.poll.response": {"answers": ["2"]}}
    assert poll_response("org.matrix.msc3381.poll.response", vote) == ("$start", ["2"])
    stable = {"m.relates_to": {"rel_type": "m.reference", "event_id": "$s"}, "m.poll.response": {"answers": ["1"]}}
    assert poll_response("m.poll.response", stable) == ("$s", ["1"])
    spoiled = {"m.relates_to": {"rel_type": "m.reference", "event_id": "$s"}, "org.matrix.msc3381.poll.response": {}}
    assert poll_response("org.matrix.msc3381.poll.response", spoiled) == ("$s", [])
    assert poll_response("m.reaction", vote) is None
    assert poll_response("org.matrix.msc3381.poll.response", {"org.matrix.msc3381.poll.response": {}}) is None


def test_poll_end_references_the_start():
    end = poll_end_content("$start", "Sondage clos")
    assert POLL_END == "org.matrix.msc3381.poll.end"
    assert end["m.relates_to"] == {"rel_type": "m.reference", "event_id": "$start"} and POLL_END in end


def test_an_attachment_is_only_an_image_or_a_file():
    assert file_payload("a.png", b"x", "image/png", msgtype="m.image")["data"] == "eA=="
    with pytest.raises(ValueError):
        file_payload("a.mp4", b"x", "video/mp4", msgtype="m.video")
