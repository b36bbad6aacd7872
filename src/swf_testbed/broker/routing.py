"""Routing: which destinations a message goes to, subscriptions attached and detached, acks.

:class:`Router` holds every topic, wildcard pattern, queue and durable
subscription of the broker; the :class:`~swf_testbed.broker.server.Broker`
is a Router that also listens on a socket.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from swf_testbed.broker.destinations import (
    CLIENT,
    QUEUE,
    TOPIC,
    Message,
    Queue,
    Subscription,
    Topic,
    WildTopic,
)
from swf_testbed.broker.durable import Durable
from swf_testbed.broker.frames import ProtocolError
from swf_testbed.broker.selectors import compile_selector
from swf_testbed.broker.store import Journal, Location

if TYPE_CHECKING:
    from swf_testbed.broker.server import Broker

log = logging.getLogger("swf_testbed.broker")

MIRROR_PREFIX = "VirtualTopic.Mirror."
"""Mirror topic of queue Q: ``VirtualTopic.Mirror.Q`` (ActiveMQ's ``<mirroredQueue>`` prefix)."""


class Router:
    """The destinations of a broker and the routing between them (no I/O)."""

    def __init__(self, *, mirror_queues: bool = True) -> None:
        self.mirror_prefix: str | None = MIRROR_PREFIX if mirror_queues else None
        self.stopping = False  # the broker is shutting down: queues hand nothing more out
        self.msg_serial = 0
        # stats (metrics): messages routed to / delivered from each destination, redeliveries
        self.messages_in: Counter[tuple[str, str]] = Counter()  # (kind, name)
        self.messages_out: Counter[str] = Counter()
        self.redeliveries = 0
        self.topics: dict[str, Topic] = {}
        self.queues: dict[str, Queue] = {}
        # Wildcard subscriptions: one WildTopic per pattern, and for each topic name
        # the patterns it matches (computed on the name's first message; cleared when
        # a pattern comes or goes -- subscribers of an existing pattern need no change).
        self.wild: dict[str, WildTopic] = {}
        self._wild_cache: dict[str, tuple[WildTopic, ...]] = {}
        self.durables: dict[tuple[str, str], Durable] = {}  # (client-id, name)
        self._selectors: dict[str, Callable[[dict[str, str]], bool]] = {}
        self.journal: Journal | None = None  # persistent messages (the Broker opens it)
        self.queue_memory_limit = 64 * 1024 * 1024  # bytes of messages one queue holds in memory

    # -- the journal: persistent queue messages are written before they are confirmed

    def journal_message(self, name: str, msg: Message) -> Location:
        """A ``persistent:true`` message for queue ``name``: into the journal's current group."""
        assert self.journal is not None
        msg.seq = self.journal.append(QUEUE, name, msg.id, msg.headers, msg.body)
        self.schedule_commit()
        assert self.journal.last_location is not None
        return self.journal.last_location

    def journal_durable(self, durable: Durable, msg: Message) -> Location:
        """A persistent topic message matched by a durable subscription: its own record."""
        assert self.journal is not None
        key = f"{durable.journal_key}\x00{msg.topic}"
        msg.seq = self.journal.append(TOPIC, key, msg.id, msg.headers, msg.body)
        self.schedule_commit()
        assert self.journal.last_location is not None
        return self.journal.last_location

    def page_after_commit(self, queue: Queue) -> None:
        """``queue`` wants to page in a message of the group not committed yet."""
        self.schedule_commit()

    def done(self, msg: Message) -> None:
        """A journaled message was consumed (acknowledged, or delivered to an auto subscription)."""
        if self.journal is not None and msg.seq:
            self.journal.ack(msg.seq)
            msg.seq = 0
            self.schedule_commit()

    def schedule_commit(self) -> None:
        """Commit the journal's group soon (the broker: after the current batch of events)."""
        if self.journal is not None:
            self.journal.commit()  # no event loop to batch on: at once

    def clear(self) -> None:
        """Forget every destination (the broker stopped)."""
        for durable in self.durables.values():
            durable.close()
        self.durables.clear()
        self.topics.clear()
        self.queues.clear()
        self.wild.clear()
        self._wild_cache.clear()

    def selector(self, text: str) -> Callable[[dict[str, str]], bool]:
        fn = self._selectors.get(text)
        if fn is None:
            fn = compile_selector(text)
            if len(self._selectors) > 10000:
                self._selectors.clear()
            self._selectors[text] = fn
        return fn

    def route(self, kind: str, name: str, msg: Message) -> None:
        self.messages_in[kind, name] += 1
        if kind == TOPIC:
            topic = self.topics.get(name)
            if topic is not None:
                topic.publish(msg)
            if self.wild:
                matching = self._wild_cache.get(name)
                if matching is None:
                    matching = self._match_wild(name)
                for wild in matching:
                    wild.publish(msg)
        else:
            queue = self.queues.get(name)
            if queue is None:
                queue = self.queues[name] = Queue(name, self)
            location = None
            if (
                self.journal is not None
                and msg.headers.get("persistent") == "true"
                and not name.startswith("/")
            ):
                location = self.journal_message(name, msg)
            if queue.paged or queue.held + msg.size > self.queue_memory_limit:
                queue.put(msg, location)  # past the memory limit: paged (journaled) or refused
            else:
                queue.messages.append(msg)
                queue.held += msg.size
            if queue.subs:
                queue.dispatch()
            if self.mirror_prefix is not None and not name.startswith("/"):
                self._mirror(name, msg)

    def _mirror(self, queue_name: str, msg: Message) -> None:
        """Publish a copy of a queue message on its mirror topic (ActiveMQ's mirrored queues).

        The copy keeps the message-id and every header; topic semantics apply
        (nobody subscribed: nothing is kept), so it never competes with the
        queue's consumers. Temporary queues are not mirrored.
        """
        assert self.mirror_prefix is not None, "only called with mirroring on"
        mirror = self.mirror_prefix + queue_name
        if mirror not in self.topics and not self.wild:
            return
        self.route(TOPIC, mirror, msg.mirror_copy(mirror))

    def _match_wild(self, name: str) -> tuple[WildTopic, ...]:
        matching = tuple(w for w in self.wild.values() if w.matches(name))
        cache = self._wild_cache
        if len(cache) >= 10000:
            cache.clear()
        cache[name] = matching
        return matching

    def _topic(self, name: str, pattern: tuple[str, ...] | None) -> Topic:
        """The Topic of ``name`` (the WildTopic of a pattern), made when missing."""
        if pattern is None:
            topic = self.topics.get(name)
            if topic is None:
                topic = self.topics[name] = Topic(name)
            return topic
        wild = self.wild.get(name)
        if wild is None:
            wild = self.wild[name] = WildTopic(name, pattern)
            self._wild_cache.clear()
        return wild

    def _topic_unused(self, topic: Topic) -> None:
        """``topic`` has no subscriber left: forget it."""
        if isinstance(topic, WildTopic):
            if self.wild.get(topic.name) is topic:
                del self.wild[topic.name]
                self._wild_cache.clear()
        elif self.topics.get(topic.name) is topic:
            del self.topics[topic.name]

    def attach(
        self, sub: Subscription, kind: str, name: str, pattern: tuple[str, ...] | None = None
    ) -> None:
        if kind == TOPIC:
            topic = self._topic(name, pattern)
            topic.subs.append(sub)
            sub.target = topic
        else:
            queue = self.queues.get(name)
            if queue is None:
                queue = self.queues[name] = Queue(name, self)
            queue.subs.append(sub)
            if sub.selector is not None:
                queue.selectors += 1
            sub.target = queue
            queue.dispatch()

    def detach(self, sub: Subscription) -> None:
        """Remove a subscription; its unacknowledged queue messages go back to the queue head."""
        if not sub.active:
            return
        sub.active = False
        target = sub.target
        if isinstance(target, Topic):
            try:
                target.subs.remove(sub)
            except ValueError:
                pass
            if sub.pending:
                sub.conn.pending_bytes -= sum(m.size for m in sub.pending)
                sub.pending.clear()
            sub.unacked.clear()
            if not target.subs:
                self._topic_unused(target)
        elif isinstance(target, Durable):
            target.consumer_gone(sub)
        elif isinstance(target, Queue):
            try:
                target.subs.remove(sub)
            except ValueError:
                pass
            if sub.selector is not None:
                target.selectors -= 1
            if sub.unacked:
                msgs = list(sub.unacked.values())
                sub.unacked.clear()
                for m in msgs:
                    m.redelivered = True
                    m.avoid = None
                target.messages.extendleft(reversed(msgs))
            target.dispatch()
            if (
                not target.subs
                and not target.messages
                and not target.paged
                and self.queues.get(target.name) is target
            ):
                del self.queues[target.name]

    def ack(self, sub: Subscription, mid: str) -> None:
        if not sub.active:
            return
        unacked = sub.unacked
        if mid not in unacked:
            return
        target = sub.target
        queue = target if isinstance(target, Queue) else None
        counted = queue if queue is not None and queue.counts_held else None
        if sub.ack == CLIENT:
            popitem = unacked.popitem
            while unacked:
                acked_id, acked = popitem(last=False)
                if acked.seq:
                    self.done(acked)
                if counted is not None:
                    counted.held -= acked.size
                if acked_id == mid:
                    break
        else:
            acked = unacked.pop(mid)
            if acked.seq:
                self.done(acked)
            if counted is not None:
                counted.held -= acked.size
        if queue is not None:
            queue.dispatch()
        elif sub.pending:
            sub.drain_pending()

    def nack(self, sub: Subscription, mid: str) -> None:
        if not sub.active:
            return
        msg = sub.unacked.pop(mid, None)
        if msg is None:
            return
        target = sub.target
        if isinstance(target, Queue):
            target.put_back(msg, sub)
        else:
            sub.deliver(msg.redelivered_copy())
            if sub.pending:
                sub.drain_pending()

    # -- durable subscriptions

    def durable_for(
        self,
        client_id: str,
        name: str,
        topic_name: str,
        pattern: tuple[str, ...] | None,
        selector_text: str | None,
        selector: Callable[[dict[str, str]], bool] | None,
    ) -> Durable:
        """The durable subscription (client_id, name) for a SUBSCRIBE, found, replaced or made."""
        key = (client_id, name)
        durable = self.durables.get(key)
        if durable is not None:
            if durable.consumer is not None:
                raise ProtocolError(
                    f"Durable consumer is in use for client: {client_id} "
                    f"and subscriptionName: {name}",
                    "that durable subscription is already attached to a subscription",
                )
            if durable.topic_name == topic_name and durable.selector_text == selector_text:
                return durable
            log.info(
                "durable subscription %s: now %s%s instead of %s%s; replaced, %d waiting "
                "messages discarded",
                durable.label,
                topic_name,
                f" [{selector_text}]" if selector_text else "",
                durable.topic_name,
                f" [{durable.selector_text}]" if durable.selector_text else "",
                len(durable.messages),
            )
            self.remove_durable(durable)
        source = self._topic(topic_name, pattern)
        # only the Broker (this class's one subclass) runs subscriptions: a durable needs its loop
        broker = cast("Broker", self)
        durable = Durable(broker, client_id, name, source, selector_text, selector)
        source.subs.append(durable)
        self.durables[key] = durable
        self.durables_changed()
        return durable

    def remove_durable(self, durable: Durable) -> None:
        """Delete a detached durable subscription and its backlog."""
        key = (durable.client_id, durable.sub_name)
        if self.durables.get(key) is durable:
            del self.durables[key]
        source = durable.source
        try:
            source.subs.remove(durable)
        except ValueError:
            pass
        if not source.subs:
            self._topic_unused(source)
        durable.forget()
        self.durables_changed()

    def durables_changed(self) -> None:
        """The set of durable subscriptions changed (the Broker keeps it on disk)."""

    # -- introspection (tests, status)

    def stats(self) -> dict[str, Any]:
        return {
            "topics": {n: len(t.subs) for n, t in self.topics.items()},
            "queues": {
                n: {
                    "messages": q.depth,
                    "in_memory": len(q.messages),
                    "paged": len(q.paged),
                    "bytes": q.held,
                    "subscriptions": len(q.subs),
                }
                for n, q in self.queues.items()
            },
            "wildcard_topics": {n: len(t.subs) for n, t in self.wild.items()},
            "durable_subscriptions": {
                f"{d.client_id}:{d.sub_name}": {
                    "topic": d.topic_name,
                    "attached": d.consumer is not None,
                    "messages": d.depth,
                    "in_memory": len(d.messages),
                    "paged": len(d.paged),
                    "bytes": d.nbytes,
                    "dropped": d.dropped,
                }
                for d in self.durables.values()
            },
            "messages_routed": self.msg_serial,
            "messages_in": {f"/{kind}/{name}": n for (kind, name), n in self.messages_in.items()},
            "messages_out": dict(self.messages_out),
            "redeliveries": self.redeliveries,
        }
