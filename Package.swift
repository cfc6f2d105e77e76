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
        .target(name: "Sodium", dependencies: ["CSodium"], swiftSettings: swiftSettings),
        .target(name: "LMDB", dependencies: ["CLMDB"], swiftSettings: swiftSettings),
        .target(name: "VaultCore", dependencies: ["Sodium", "LMDB"], swiftSettings: swiftSettings),
        .executableTarget(name: "CoreBench", dependencies: ["VaultCore", "Sodium"], swiftSettings: swiftSettings),

        .testTarget(name: "SodiumTests", dependencies: ["Sodium"], swiftSettings: swiftSettings),
        .testTarget(name: "LMDBTests", dependencies: ["LMDB"], swiftSettings: swiftSettings),
        .testTarget(name: "VaultCoreTests", dependencies: ["VaultCore", "Sodium", "LMDB"], swiftSettings: swiftSettings),
    ]
)
