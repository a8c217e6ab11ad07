import DNSTesting

/// libFuzzer target over the master-file parser and zone validation (scripts/fuzz.sh).
nonisolated(unsafe) let checks = FuzzChecks.ZoneText()  // libFuzzer calls from one thread

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzZone(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    checks.check(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}
