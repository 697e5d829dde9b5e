"""The generated Python bindings, used as an app would: two and three homes on loopback,
an invitation and a join, a note seen through a listener, amendments, a volunteer kept
from the health plan, bad input, and a node stopped and started again.

Run after `bindings/generate DIR`, with CARE_BINDINGS_DIR=DIR/python (see conftest.py).
"""

import asyncio
import queue
import time

import pytest

from care_bindings import (
    CareError,
    CareHome,
    ChangeListener,
    Medication,
    NewBooking,
    NewNote,
    NodeOptions,
    Part,
    Role,
    SignatureCheck,
)

LOOPBACK = NodeOptions(listen="127.0.0.1:0", lan=False)
# Generous: a loaded CI machine; a healthy run takes well under a second per wait.
WAIT_S = 30


class Recorder(ChangeListener):
    """Keeps every update it is given, from the engine's thread."""

    def __init__(self):
        self.updates = queue.Queue()

    def on_update(self, update):
        self.updates.put(update)

    def wait_for(self, team, part, timeout=WAIT_S):
        """The first update naming `part` of `team` (skipping others)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no update of {part} in {team} within {timeout} s")
            try:
                update = self.updates.get(timeout=left)
            except queue.Empty:
                continue
            if any(c.team_id == team and c.part == part for c in update.changes):
                return update


async def until(check, timeout=WAIT_S):
    """Awaits `check()` until it returns something true."""
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found:
            return found
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.05)


async def team_of_two(tmp_path, role=Role.WORKER):
    """Rosa's home with a team and a running node, and Sam's home joined to it."""
    rosa = await CareHome.open(str(tmp_path / "rosa"), "Rosa")
    team = await rosa.create_team("Rosa's team")
    await rosa.start(LOOPBACK)
    ticket = await rosa.invite(team, role, "Sam", 600)
    sam = await CareHome.open(str(tmp_path / "sam"), "Sam")
    await sam.start(LOOPBACK)
    assert await sam.join(ticket) == team
    return rosa, sam, team


def test_a_note_written_on_one_home_reaches_the_listener_of_the_other(tmp_path):
    async def run():
        rosa, sam, team = await team_of_two(tmp_path)
        listener = Recorder()
        subscription = await sam.subscribe(listener)
        first = listener.updates.get(timeout=WAIT_S)
        assert first.initial
        assert any(c.team_id == team and c.part == Part.MEMBERS for c in first.changes)

        note = NewNote(
            text="Tea and toast, then a walk to the park.",
            medications=[Medication(name="paracetamol", dose="500mg", given=True)],
            mood="cheerful",
            concern=False,
        )
        note_id = await rosa.add_note(team, note)
        update = listener.wait_for(team, Part.NOTES)
        assert not update.initial
        notes = await sam.notes(team, limit=10)
        assert [n.id for n in notes] == [note_id]
        seen = notes[0]
        assert seen.text == note.text
        assert seen.author_name == "Rosa"
        assert seen.author_role == Role.OWNER
        assert seen.medications == note.medications
        assert seen.mood == "cheerful" and not seen.concern

        await rosa.amend_note(team, note_id, "She also had soup at one.")
        listener.wait_for(team, Part.NOTES)
        amended = await until(lambda: amended_note(sam, team, note_id))
        assert amended.text == note.text, "the original text is kept"
        assert [a.text for a in amended.amendments] == ["She also had soup at one."]
        assert amended.amendments[0].author_name == "Rosa"
        # Sam's device checks who wrote it, from the record it received.
        audits = await sam.audit_note(team, note_id)
        assert [a.what.split(" ")[0] for a in audits] == ["note", "amendment"]
        assert all(a.member_name == "Rosa" and a.role == Role.OWNER for a in audits)
        assert all(a.verified and a.signature == SignatureCheck.VALID for a in audits)
        assert all(a.received_at_ms is not None for a in audits)

        # Closed: no more deliveries, even as notes keep arriving.
        subscription.close()
        while not listener.updates.empty():
            listener.updates.get()
        await rosa.add_note(team, NewNote(text="A quiet evening."))
        await until(lambda: note_count(sam, team, 2))
        await asyncio.sleep(0.3)
        assert listener.updates.empty(), "a closed subscription was still called"
        await sam.close()
        await rosa.close()

    asyncio.run(run())


async def amended_note(home, team, note_id):
    note = await home.note(team, note_id)
    return note if note.amendments else None


async def note_count(home, team, count):
    return len(await home.notes(team)) >= count


def test_a_volunteer_is_refused_the_health_plan(tmp_path):
    async def run():
        rosa, lou, team = await team_of_two(tmp_path, role=Role.VOLUNTEER)
        await rosa.set_plan_section(team, "medication", "Paracetamol 500mg at 8 and 20.")
        await rosa.set_plan_section(team, "routines", "Tea at eight.")
        await until(lambda: plan_has(lou, team, "routines"))
        with pytest.raises(CareError.NotAllowed) as refused:
            await lou.plan_section(team, "medication")
        assert "volunteer" in str(refused.value)
        with pytest.raises(CareError.NotAllowed):
            await lou.set_plan_section(team, "medication", "None.")
        assert await lou.plan_section(team, "routines") == "Tea at eight."
        sections = [s.section for s in await lou.plan(team)]
        assert "medication" not in sections
        await lou.close()
        await rosa.close()

    asyncio.run(run())


async def plan_has(home, team, section):
    return any(s.section == section for s in await home.plan(team))


def test_bad_input_raises_the_typed_error(tmp_path):
    async def run():
        rosa = await CareHome.open(str(tmp_path / "rosa"), "Rosa")
        team = await rosa.create_team("Rosa's team")
        with pytest.raises(CareError.InvalidInput) as unknown:
            await rosa.plan_section(team, "bathing")
        assert "bathing" in str(unknown.value)
        with pytest.raises(CareError.InvalidInput):
            await rosa.set_plan_section(team, "bathing", "Tuesdays.")
        with pytest.raises(CareError.InvalidInput) as long_note:
            await rosa.add_note(team, NewNote(text="x" * 70_000))
        assert "note text" in str(long_note.value)
        with pytest.raises(CareError.InvalidInput):
            await rosa.add_note(team, NewNote(text=""))
        with pytest.raises(CareError.NotFound):
            await rosa.notes("no such team")
        with pytest.raises(CareError.InvalidInput):
            await rosa.note(team, "not-a-note-id")
        with pytest.raises(CareError.NotRunning):
            await rosa.invite(team, Role.WORKER, "Sam", 600)
        assert await rosa.kept_aside(team) == []
        with pytest.raises(CareError.InvalidInput):
            await rosa.accept_kept_aside(team, ["not-a-change"])
        with pytest.raises(CareError.NotFound):
            await rosa.accept_kept_aside(team, ["ab" * 32])

        await rosa.start(LOOPBACK)
        ticket = await rosa.invite(team, Role.WORKER, "Sam", 600)
        sam = await CareHome.open(str(tmp_path / "sam"), "Sam")
        await sam.start(LOOPBACK)
        damaged = ticket[:-6] + ("A" if ticket[-6] != "A" else "B") + ticket[-5:]
        with pytest.raises(CareError.InvalidInput):
            await sam.join(damaged)
        with pytest.raises(CareError.InvalidInput):
            await sam.join("care-ticket-nonsense")
        assert await sam.teams() == [], "a refused ticket joins nothing"
        # The undamaged ticket still works: nothing was spent on the bad ones.
        assert await sam.join(ticket) == team
        await sam.close()
        await rosa.close()

    asyncio.run(run())


def test_a_node_stopped_and_started_again_loses_nothing(tmp_path):
    async def run():
        rosa, sam, team = await team_of_two(tmp_path)
        first = await rosa.add_note(team, NewNote(text="Morning visit: all well."))
        await until(lambda: note_count(sam, team, 1))

        await sam.stop()
        assert not sam.is_running()
        # Written on both sides while apart: Sam offline, Rosa online.
        offline = await sam.add_note(team, NewNote(text="Written with no signal."))
        while_away = await rosa.add_note(team, NewNote(text="Evening visit: tired."))

        await sam.start(LOOPBACK)
        statuses = await sam.sync_once(WAIT_S * 1000)
        assert [(s.member_name, s.in_sync) for s in statuses] == [("Rosa", True)]
        assert statuses[0].last_sync_ms is not None
        expected = {first, offline, while_away}
        assert {n.id for n in await sam.notes(team)} == expected
        await until(lambda: note_count(rosa, team, 3))
        assert {n.id for n in await rosa.notes(team)} == expected

        # The home itself, closed and opened again from its directory.
        await sam.close()
        with pytest.raises(CareError.NotRunning):
            await sam.notes(team)
        reopened = await CareHome.open(str(tmp_path / "sam"))
        assert {n.id for n in await reopened.notes(team)} == expected
        await reopened.close()
        await rosa.close()

    asyncio.run(run())


def test_rota_promises_members_export_and_removal(tmp_path):
    async def run():
        rosa, sam, team = await team_of_two(tmp_path)
        start = int(time.time() * 1000) + 86_400_000
        booking = await rosa.add_booking(
            team, NewBooking(start_ms=start, end_ms=start + 3_600_000, title="Morning visit", needed=1)
        )
        promise = await rosa.add_promise(team, "Getting Support Promise", "We turn up on time.")
        await until(lambda: has_booking(sam, team, booking))
        await sam.join_booking(team, booking)
        await until(lambda: has_promise(sam, team, promise))
        assert await sam.agree(team, promise) == 1
        await until(lambda: booking_joined_by(rosa, team, booking, "Sam"))
        await until(lambda: promise_agreed_by(rosa, team, promise, "Sam"))
        await sam.decline_booking(team, booking)
        [seen] = await sam.bookings(team)
        assert [(r.member_name, r.joined) for r in seen.responses] == [("Sam", False)]

        members = {m.name: m for m in await rosa.members(team)}
        assert (members["Rosa"].role, members["Sam"].role) == (Role.OWNER, Role.WORKER)
        written = await rosa.export(team, str(tmp_path / "export"), True)
        assert written >= 3 and (tmp_path / "export" / "manifest.json").exists()

        await rosa.remove_member(team, members["Sam"].id)
        assert [m.name for m in await rosa.members(team)] == ["Rosa"]
        with pytest.raises(CareError.NotAllowed) as again:
            await rosa.remove_member(team, members["Sam"].id)
        assert "not a current member" in str(again.value)
        with pytest.raises(CareError.InvalidInput):
            await rosa.remove_member(team, "not-a-member-id")
        await sam.close()
        await rosa.close()

    asyncio.run(run())


async def has_booking(home, team, booking):
    return any(b.id == booking for b in await home.bookings(team))


async def has_promise(home, team, promise):
    return any(p.id == promise for p in await home.promises(team))


async def booking_joined_by(home, team, booking, name):
    found = [b for b in await home.bookings(team) if b.id == booking]
    return found and any(r.member_name == name and r.joined for r in found[0].responses)


async def promise_agreed_by(home, team, promise, name):
    found = [p for p in await home.promises(team) if p.id == promise]
    return found and name in found[0].agreed_by


def test_opening_a_directory_with_no_home_and_no_name_is_refused(tmp_path):
    async def run():
        with pytest.raises(CareError.NotFound):
            await CareHome.open(str(tmp_path / "empty"))

    asyncio.run(run())
