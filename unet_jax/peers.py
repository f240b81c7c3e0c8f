"""Stops a multi-process run's survivors as soon as one of its processes dies.

A gloo collective usually fails at once when a peer's connection closes, but not always: a
survivor can stay blocked in one until the coordination service misses the peer's
heartbeats, and JAX then aborts it (SIGABRT, no message). So every process also holds a
plain TCP connection to process 0. The kernel closes a dead process's sockets at once, so a
connection that ends without a goodbye means its process is gone: the watcher reports it
(`on_lost`, which ends this process) within a moment, whatever the main thread is blocked in.
Process 0 leaving ends its connections too, which stops the others in turn.
"""

import logging
import socket
import threading

import jax
from jax._src import distributed as jax_distributed

_KEY = "unet_jax/peer_watch_address"
_BYE = b"bye"


class PeerWatch:
  """process 0 <-> every other process, each connection read by a daemon thread."""

  def __init__(self, on_lost, timeout_seconds: int = 60):
    self.on_lost = on_lost
    self.closing = False
    self.connections = []
    try:
      self._connect(timeout_seconds)
    except OSError as e:  # E.g. a firewall: the heartbeat timeout is then the only guard.
      logging.warning("peer watch unavailable (%s); a dead process is noticed by failed "
                      "collectives or after --heartbeat_timeout_seconds", e)

  def _connect(self, timeout_seconds: int) -> None:
    client = jax_distributed.global_state.client  # What multihost_utils syncs through.
    if jax.process_index() == 0:
      host = jax_distributed.global_state.coordinator_address.rsplit(":", 1)[0]
      with socket.create_server(("", 0)) as listener:
        client.key_value_set(_KEY, f"{host}:{listener.getsockname()[1]}")
        listener.settimeout(timeout_seconds)
        for _ in range(jax.process_count() - 1):
          connection, _ = listener.accept()
          connection.settimeout(None)
          self._watch(connection, int.from_bytes(connection.recv(4), "big"))
    else:
      address = client.blocking_key_value_get(_KEY, timeout_seconds * 1000)
      host, port = address.rsplit(":", 1)
      connection = socket.create_connection((host.strip("[]"), int(port)), timeout_seconds)
      connection.settimeout(None)
      connection.sendall(jax.process_index().to_bytes(4, "big"))
      self._watch(connection, 0)

  def _watch(self, connection: socket.socket, peer: int) -> None:
    self.connections.append(connection)
    threading.Thread(target=self._read, args=(connection, peer), daemon=True,
                     name=f"peer-watch-{peer}").start()

  def _read(self, connection: socket.socket, peer: int) -> None:
    try:
      said = connection.recv(len(_BYE))
    except OSError:
      said = b""
    if said != _BYE and not self.closing:
      self.on_lost(f"process {peer} ended without finishing")

  def close(self) -> None:
    """Says goodbye: this process finished its part, its leaving is no failure."""
    self.closing = True
    for connection in self.connections:
      try:
        connection.sendall(_BYE)
      except OSError:
        pass
