/// The Raft consensus core (issue 4): a pure state machine, no I/O, no clock, no randomness
/// of its own. Work in progress on the `raft` branch.
public enum RaftCore {}
