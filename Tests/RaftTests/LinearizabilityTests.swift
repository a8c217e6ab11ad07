import Raft
import RaftTesting
import Testing

private func op(_ client: Int, _ operation: KVOperation, _ call: Int64, _ returned: Int64?, _ result: KVResult)
    -> HistoryOperation
{
    HistoryOperation(client: client, operation: operation, call: call, returned: returned, result: result)
}

@Suite struct LinearizabilityTests {
    @Test func sequentialAndConcurrentHistoriesPass() {
        let history = [
            op(1, .put(key: "x", value: "1"), 0, 10, .ok),
            op(2, .get(key: "x"), 11, 20, .value("1")),
            // Concurrent put and get: the get may see either value.
            op(1, .put(key: "x", value: "2"), 30, 50, .ok),
            op(2, .get(key: "x"), 35, 45, .value("1")),
            op(3, .get(key: "x"), 40, 60, .value("2")),
            op(3, .cas(key: "x", expected: "2", new: "3"), 70, 80, .swapped(true)),
            op(1, .cas(key: "x", expected: "2", new: "4"), 90, 95, .swapped(false)),
            op(2, .get(key: "y"), 0, 100, .value(nil)),
        ]
        #expect(LinearizabilityChecker.check(history) == .linearizable)
    }

    @Test func staleReadIsCaught() {
        // The second put finished before the get started, yet the get returns the first value.
        let history = [
            op(1, .put(key: "x", value: "1"), 0, 10, .ok),
            op(1, .put(key: "x", value: "2"), 20, 30, .ok),
            op(2, .get(key: "x"), 40, 50, .value("1")),
        ]
        guard case .violation(let key, let ops) = LinearizabilityChecker.check(history) else {
            Issue.record("stale read not caught")
            return
        }
        #expect(key == "x" && !ops.isEmpty)
    }

    @Test func lostAcknowledgedWriteIsCaught() {
        let history = [
            op(1, .put(key: "x", value: "1"), 0, 10, .ok),
            op(2, .get(key: "x"), 20, 30, .value(nil)),
        ]
        #expect(LinearizabilityChecker.check(history) != .linearizable)
    }

    @Test func readsMustNotGoBackInTime() {
        // Two sequential reads by one client during a concurrent write: new then old is not allowed.
        let history = [
            op(1, .put(key: "x", value: "1"), 0, 5, .ok),
            op(2, .put(key: "x", value: "2"), 10, 100, .ok),
            op(3, .get(key: "x"), 20, 30, .value("2")),
            op(3, .get(key: "x"), 40, 50, .value("1")),
        ]
        #expect(LinearizabilityChecker.check(history) != .linearizable)
    }

    @Test func inconsistentCompareAndSwapIsCaught() {
        // Both swaps from the same expected value cannot succeed.
        let history = [
            op(1, .put(key: "x", value: "a"), 0, 5, .ok),
            op(2, .cas(key: "x", expected: "a", new: "b"), 10, 20, .swapped(true)),
            op(3, .cas(key: "x", expected: "a", new: "c"), 10, 20, .swapped(true)),
        ]
        #expect(LinearizabilityChecker.check(history) != .linearizable)
    }

    @Test func unknownOutcomesMayOrMayNotHappen() {
        // A put that timed out may take effect late...
        let late = [
            op(1, .put(key: "x", value: "1"), 0, nil, .unknown),
            op(2, .get(key: "x"), 10, 20, .value(nil)),
            op(2, .get(key: "x"), 30, 40, .value("1")),
        ]
        #expect(LinearizabilityChecker.check(late) == .linearizable)
        // ...or never; but not before it was called.
        let early = [
            op(2, .get(key: "x"), 0, 5, .value("1")),
            op(1, .put(key: "x", value: "1"), 10, nil, .unknown),
        ]
        #expect(LinearizabilityChecker.check(early) != .linearizable)
    }

    @Test func keysAreCheckedIndependently() {
        let history = [
            op(1, .put(key: "a", value: "1"), 0, 10, .ok),
            op(1, .put(key: "b", value: "2"), 20, 30, .ok),
            op(2, .get(key: "b"), 40, 50, .value(nil)),  // the violation is on b alone
            op(2, .get(key: "a"), 60, 70, .value("1")),
        ]
        guard case .violation(let key, _) = LinearizabilityChecker.check(history) else {
            Issue.record("not caught")
            return
        }
        #expect(key == "b")
    }

    @Test func historyFileRoundTrip() throws {
        let text = """
            # recorded by a chaos test
            {"client":1,"op":"put","key":"k","value":"v","call":123,"return":456,"ok":true}
            {"client":2,"op":"get","key":"k","value":"v","call":460,"return":470,"ok":true}
            {"client":3,"op":"cas","key":"k","expected":"v","value":"w","call":480,"return":500,"ok":true}
            {"client":1,"op":"put","key":"k","value":"z","call":510,"return":null}
            {"client":1,"op":"put","key":"k","value":"q","call":520,"return":530,"error":"not leader"}

            {"client":2,"op":"get","key":"k","value":"w","call":540,"return":550}
            """
        let history = try HistoryFile.parse(text)
        #expect(history.count == 5)
        #expect(history[2].operation == .cas(key: "k", expected: "v", new: "w") && history[2].result == .swapped(true))
        #expect(history[3].returned == nil && history[3].result == .unknown)
        #expect(LinearizabilityChecker.check(history) == .linearizable)
        let stale = try HistoryFile.parse(text + "\n" + #"{"client":3,"op":"get","key":"k","value":"v","call":600,"return":610}"#)
        #expect(LinearizabilityChecker.check(stale) != .linearizable)
    }

    @Test(arguments: [
        (#"{"client":1,"op":"put","key":"k","call":1,"return":2}"#, 1),
        (#"{"client":1,"op":"del","key":"k","value":"v","call":1,"return":2}"#, 1),
        ("# fine\nnot json", 2),
        (#"{"client":1,"op":"get","key":"k","value":"v","call":5,"return":2}"#, 1),
    ])
    func historyFileErrorsNameTheLine(text: String, line: Int) {
        #expect { try HistoryFile.parse(text) } throws: { ($0 as? HistoryFile.ParseError)?.line == line }
    }
}
