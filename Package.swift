// swift-tools-version:6.1
import PackageDescription

/// One settings array for every target (as Hummingbird's Package.swift does), so the
/// language mode and strictness never drift between modules.
let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("InternalImportsByDefault"),
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "ShredVault",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "VaultCore", targets: ["VaultCore"]),
        .executable(name: "shredvault-corebench", targets: ["CoreBench"]),
        .executable(name: "shredvault", targets: ["shredvault"]),
        .executable(name: "shredvault-crash-test", targets: ["CrashTest"]),
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
    ],
    targets: [
        // C libraries from Debian's -dev packages, found through pkg-config.
        .systemLibrary(
            name: "CSodium",
            pkgConfig: "libsodium",
            providers: [.apt(["libsodium-dev"])]
        ),
        .systemLibrary(
            name: "CLMDB",
            pkgConfig: "lmdb",
            providers: [.apt(["liblmdb-dev"])]
        ),
        // The system calls Swift's Glibc module does not show (prctl, malloc_trim, SO_PEERCRED,
        // posix_spawn's closefrom), in C with _GNU_SOURCE: no dlsym, no reinterpreted prototypes.
        .target(name: "CVaultSystem"),
        // A pthread-mutex lock ThreadSanitizer can see (Synchronization.Mutex uses raw futexes on Linux).
        .target(name: "Locking", swiftSettings: swiftSettings),
        .target(name: "Sodium", dependencies: ["CSodium", "CVaultSystem"], swiftSettings: swiftSettings),
        .target(name: "LMDB", dependencies: ["CLMDB", "Locking"], swiftSettings: swiftSettings),
        .target(
            name: "VaultCore",
            dependencies: [
                "Sodium", "LMDB", "Locking", "CVaultSystem",
                // The PostgreSQL journal backend (`--journal postgres://...`).
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(name: "CoreBench", dependencies: ["VaultCore", "Sodium", "Locking", "CVaultSystem"], swiftSettings: swiftSettings),
        // JSON scanning/writing and the request/response shapes shared by server and CLI.
        .target(name: "VaultAPI", dependencies: ["VaultCore", "Sodium"], swiftSettings: swiftSettings),
        // A small HTTP/1.1 client over a Unix socket (CLI, benchmarks, tests).
        .target(name: "VaultClient", dependencies: ["Locking"], swiftSettings: swiftSettings),
        .target(
            name: "VaultServer",
            dependencies: [
                "VaultCore", "VaultAPI", "Sodium", "Locking", "CVaultSystem",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "VaultCLI",
            dependencies: [
                "VaultCore", "VaultAPI", "VaultClient", "VaultServer", "Sodium", "Locking",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(name: "shredvault", dependencies: ["VaultCLI"], swiftSettings: swiftSettings),
        // Issue 5's crash suite: kills the real daemon under load and checks every acknowledgement (scripts/crash-test).
        .executableTarget(
            name: "CrashTest",
            dependencies: ["PostgresSupport", "CVaultSystem", "VaultClient", "VaultCore", "Locking",
                           .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: swiftSettings
        ),

        // Test support shared by the seeded tests of several targets (generator, knobs, output).
        .target(name: "FuzzSupport", path: "Tests/FuzzSupport", swiftSettings: swiftSettings),
        // A real PostgreSQL cluster of the tests' own (initdb in a temporary directory).
        .target(name: "PostgresSupport", dependencies: ["CVaultSystem"], path: "Tests/PostgresSupport", swiftSettings: swiftSettings),
        .testTarget(name: "SodiumTests", dependencies: ["Sodium"], swiftSettings: swiftSettings),
        .testTarget(name: "LMDBTests", dependencies: ["LMDB", "Locking"], swiftSettings: swiftSettings),
        .testTarget(name: "VaultCoreTests", dependencies: ["VaultCore", "Sodium", "LMDB", "Locking", "FuzzSupport", "PostgresSupport"], swiftSettings: swiftSettings),
        .testTarget(name: "VaultAPITests", dependencies: ["VaultAPI", "VaultCore", "Sodium", "FuzzSupport"], swiftSettings: swiftSettings),
        .testTarget(
            name: "VaultServerTests",
            dependencies: ["VaultServer", "VaultClient", "VaultAPI", "VaultCore", "VaultCLI", "Sodium", "LMDB", "Locking", "FuzzSupport", "PostgresSupport"],
            swiftSettings: swiftSettings
        ),
    ]
)
