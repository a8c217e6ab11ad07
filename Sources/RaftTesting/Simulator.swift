import Raft

/// Deterministic cluster simulator over the Raft core (issue 4). Work in progress.
public enum RaftSimulation {}
