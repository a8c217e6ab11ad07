// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "Disco",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "discod", targets: ["discod"]),
        .executable(name: "discoctl", targets: ["discoctl"]),
        .executable(name: "FuzzWire", targets: ["FuzzWire"]),
        .executable(name: "FuzzZone", targets: ["FuzzZone"]),
        .executable(name: "raft-sim", targets: ["raft-sim"]),
        .library(name: "RaftTesting", targets: ["RaftTesting"]),
        .library(name: "DNSTesting", targets: ["DNSTesting"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.3.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.30.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.1.0"),
    ],
    targets: [
        .target(name: "CShims"),
        .target(name: "DNSWire"),
        .target(name: "DNSZone", dependencies: ["DNSWire"]),
        .target(name: "RateLimit", dependencies: ["DNSWire", .product(name: "Atomics", package: "swift-atomics")]),
        .target(
            name: "DNSServer",
            dependencies: [
                "DNSWire", "DNSZone", "RateLimit", "CShims",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "Daemon",
            dependencies: [
                "DNSServer", "DNSZone", "DNSWire", "RateLimit", "CShims", "Cluster", "API", "Raft", "Store", "Registry", "Health", "Auth",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        .systemLibrary(name: "CSQLite", path: "Sources/CSQLite", providers: [.apt(["libsqlite3-dev"])]),
        .target(name: "Store", dependencies: ["CSQLite"]),
        .target(name: "Auth", dependencies: [
            "Store", .product(name: "Crypto", package: "swift-crypto"), .product(name: "NIOSSL", package: "swift-nio-ssl"),
        ]),
        .target(name: "Raft"),
        .target(name: "Registry", dependencies: [
            "Store", "DNSWire", "DNSZone",
            .product(name: "HashTreeCollections", package: "swift-collections"),
            .product(name: "Atomics", package: "swift-atomics"),
        ]),
        .target(
            name: "Health",
            dependencies: [
                "Registry",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "API",
            dependencies: [
                "Cluster", "Raft", "Store", "Registry", "Health", "Auth",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(name: "RaftTesting", dependencies: ["Raft"]),
        .target(
            name: "Cluster",
            dependencies: [
                "Raft", "Store",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(name: "raft-sim", dependencies: [
            "RaftTesting", "Raft", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "discod", dependencies: ["Daemon"]),
        .target(name: "DiscoClient", dependencies: [
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "X509", package: "swift-certificates"),
            .product(name: "SwiftASN1", package: "swift-asn1"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        .executableTarget(name: "discoctl", dependencies: ["DiscoClient"]),
        // Test kit: the fuzzers' properties, shared by the fuzz targets and the corpus replay tests.
        .target(name: "DNSTesting", dependencies: ["DNSServer", "DNSZone", "DNSWire"]),
        .executableTarget(name: "FuzzWire", dependencies: ["DNSTesting"]),
        .executableTarget(name: "FuzzZone", dependencies: ["DNSTesting"]),
        // The answer path alone, timed (scripts/bench/answer.sh).
        .executableTarget(name: "answer-bench", dependencies: ["DNSTesting", "DNSServer", "DNSZone", "DNSWire",
                                                              .product(name: "Atomics", package: "swift-atomics")]),
        // A master file's load alone, timed, with its memory (scripts/bench/zoneload.sh).
        .executableTarget(name: "zone-bench", dependencies: ["DNSZone", "DNSWire", "CShims"]),
        .testTarget(name: "DNSWireTests", dependencies: ["DNSWire"]),
        .testTarget(name: "DNSZoneTests", dependencies: ["DNSZone", "DNSWire"]),
        .testTarget(name: "RateLimitTests", dependencies: ["RateLimit", "DNSWire", "MallocCounter"]),
        // Test-only: replaces malloc in the test binary to count allocations per query.
        .target(name: "MallocCounter", path: "Tests/Support/MallocCounter"),
        .testTarget(name: "DNSServerTests", dependencies: ["DNSServer", "DNSZone", "DNSWire", "RateLimit", "CShims", "MallocCounter", "DNSTesting"]),
        .testTarget(name: "DaemonTests", dependencies: ["Daemon", "DNSWire", "RateLimit", "CShims", "Cluster", "Raft", "Health", "Auth", "Registry", "Store"]),
        .testTarget(name: "RaftTests", dependencies: ["Raft", "RaftTesting"]),
        .testTarget(name: "StoreTests", dependencies: ["Store"]),
        .testTarget(name: "AuthTests", dependencies: ["Auth", "Store", .product(name: "NIOSSL", package: "swift-nio-ssl")]),
        .testTarget(name: "HealthTests", dependencies: [
            "Health", "Registry",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "RegistryTests", dependencies: ["Registry", "DNSServer", "DNSZone", "DNSWire"]),
        .testTarget(name: "ClusterTests", dependencies: [
            "RaftTesting",
            "Cluster", "Raft", "Store", "API", "Registry",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
    ]
)
