import DNSTesting

/// libFuzzer target over the message parser and the answer pipeline (scripts/fuzz.sh).
nonisolated(unsafe) let checks = FuzzChecks.Wire()  // libFuzzer calls from one thread

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzWire(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    checks.check(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
