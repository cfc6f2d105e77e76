import Foundation
import FuzzSupport
import Testing
import VaultClient
import VaultServer

#if canImport(Glibc)
import Glibc
#endif

/// The transparency page in a real browser: the real daemon on its real socket serves it
/// (`Accept: text/html`), Debian's Chromium renders it headless to the DOM and to a PNG, and
/// the test reads both: the page's text, the chart's 92 bars, and the bars' pixels.
/// Chromium is required (`scripts/setup` installs it): without it the test fails, never skips.
@Suite(.serialized) struct ReportPageBrowserTests {
    static let chromiumCandidates = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
    static let reference = #"QA <b>contract</b> & "7" <script>alert(1)</script>"#

    /// Records of several categories and channels, retentions that expire on five different
    /// days of the chart (and one past it), a contract in force, two holds.
    static func populate(_ h: ServerHarness) async throws
        -> (admin: VaultHTTPClient, agent: VaultHTTPClient, adminToken: [UInt8], agentToken: [UInt8]) {
        let t = try await h.tenant("acme-eu")
        let contract = try await t.admin.send("POST", "/v1/retention/extensions", body: json([
            "purpose": "quality", "reference": reference, "retention": "P180D", "categories": ["non_personal"],
            "until": "2999-01-01T00:00:00Z"]))
        #expect(contract.status == 201, "\(contract.text)")
        let policy = try await t.admin.send("PUT", "/v1/retention", body: json([
            "default": "P92D", "categories": ["privacy_related": "P7D", "non_personal": "P180D"]]))
        #expect(policy.status == 200, "\(policy.text)")
        let writes: [(subject: String, category: String, channel: String, retention: String?, times: Int)] = [
            ("cust-1", "personal", "phone", "P3D", 2),
            ("cust-2", "personal", "email", "P10D", 1),
            ("cust-3", "personal", "phone", nil, 1),            // P92D: the chart's last day
            ("cust-4", "privacy_related", "chat", nil, 3),      // P7D by the policy
            ("cust-5", "non_personal", "web", "P45D", 1),
            ("cust-6", "non_personal", "sms", nil, 1),          // P180D under the contract: past the chart
        ]
        var someRecord = ""
        for w in writes {
            for _ in 0..<w.times {
                var r: [String: Any] = ["subject": w.subject, "category": w.category, "channel": w.channel, "data": ["n": 1]]
                if let retention = w.retention { r["retention"] = retention }
                let created = try await t.agent.send("POST", "/v1/records", body: json(r))
                #expect(created.status == 201, "\(created.text)")
                someRecord = try created.object()["id"] as? String ?? ""
            }
        }
        for hold in [["subject": "cust-1", "reason": "litigation", "reference": "case-9"],
                     ["record": someRecord, "reason": "dispute", "reference": "case-10"]] {
            let r = try await t.admin.send("POST", "/v1/holds", body: json(hold))
            #expect(r.status == 201, "\(r.text)")
        }
        // An hour on: a record kept PnD now expires on day n-1 of the chart (day 0 = the next 24 hours).
        h.clock.advance(seconds: 3600)
        return (t.admin, t.agent, t.adminToken, t.agentToken)
    }

    /// Expected bars: day index -> records.
    static let expectedDays: [Int: Int] = [2: 2, 6: 3, 9: 1, 44: 1, 91: 1]

    @Test func chromiumRendersThePageWithOneBarPerDay() async throws {
        let chromium = try #require(Self.chromiumCandidates.first { FileManager.default.isExecutableFile(atPath: $0) },
                                    "Debian's chromium is not installed: run scripts/setup (it installs the chromium package)")
        try await ServerHarness.with(manualClock: true) { (h: ServerHarness) async throws in
            let t = try await Self.populate(h)
            let html = [("Accept", "text/html")]

            // Admin only, as the JSON: an agent gets the problem, not the page.
            let refused = try await t.agent.send("GET", "/v1/report", headers: html)
            #expect(refused.status == 403)
            #expect(refused.isProblem)
            #expect(try await h.client(nil).send("GET", "/v1/report", headers: html).status == 401)

            // The JSON is still the default, and counts the holds.
            let plain = try await t.admin.send("GET", "/v1/report")
            #expect(plain.header("content-type") == "application/json")
            let report = try plain.object()
            #expect(report["holds"] as? Int == 2)
            let perDay = try #require(report["expiries_per_day"] as? [[String: Any]]).map { $0["records"] as? Int ?? -1 }
            #expect(perDay.count == 92)
            #expect(perDay == (0..<92).map { Self.expectedDays[$0] ?? 0 })

            let page = try await t.admin.send("GET", "/v1/report", headers: html)
            #expect(page.status == 200)
            #expect(page.header("content-type") == "text/html; charset=utf-8")
            #expect(page.header("content-security-policy") == ReportPage.contentSecurityPolicy)
            #expect(page.header("vary") == "Accept")
            let browser = try await t.admin.send("GET", "/v1/report", headers: [
                ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")])
            #expect(browser.header("content-type") == "text/html; charset=utf-8", "a browser's Accept gets the page")

            let dir = try BrowserRun.temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let file = dir + "/report.html"
            try Data(page.body).write(to: URL(fileURLWithPath: file))

            // The DOM as Chromium built it.
            let dump = try BrowserRun.chromium(chromium, ["--dump-dom", "file://" + file], in: dir, name: "dom")
            #expect(dump.status == 0 && !dump.signalled, "chromium --dump-dom: \(dump.signalled ? "signal" : "exit") \(dump.status): \(dump.stderr.suffix(2000))")
            let dom = dump.stdout
            say("report page: chromium --dump-dom took \(String(format: "%.2f", dump.seconds)) s, \(dom.utf8.count) bytes of DOM")
            try Self.checkDOM(dom)

            // The pixels.
            let png = dir + "/report.png"
            let shot = try BrowserRun.chromium(chromium, ["--screenshot=" + png, "file://" + file], in: dir, name: "shot")
            #expect(shot.status == 0 && !shot.signalled, "chromium --screenshot: \(shot.signalled ? "signal" : "exit") \(shot.status): \(shot.stderr.suffix(2000))")
            let size = (try? FileManager.default.attributesOfItem(atPath: png)[.size] as? Int) ?? 0
            say("report page: chromium --screenshot took \(String(format: "%.2f", shot.seconds)) s, \(size) bytes of PNG")
            #expect(size > 10_000, "the screenshot is \(size) bytes")
            // SHREDVAULT_TEST_KEEP_PAGE=DIR keeps the page and its screenshot to look at.
            if let keep = ProcessInfo.processInfo.environment["SHREDVAULT_TEST_KEEP_PAGE"], !keep.isEmpty {
                for name in ["report.html", "report.png"] {
                    try? FileManager.default.removeItem(atPath: keep + "/" + name)
                    try FileManager.default.copyItem(atPath: dir + "/" + name, toPath: keep + "/" + name)
                }
            }
            let pixels = try BrowserRun.barColumns(png, in: dir)
            #expect(pixels.width == 1200 && pixels.height == 2000, "\(pixels)")
            #expect(pixels.bars == Self.expectedDays.count, "bars of the days with expiries seen in the PNG: \(pixels)")
            #expect(pixels.zeroBars == 92 - Self.expectedDays.count, "bars of the days without: \(pixels)")
            #expect(pixels.barWidth == ReportPage.Chart.barWidth, "\(pixels)")
        }
    }

    /// `shredvault report --html FILE`: the page the daemon serves, in a new 0644 file; an
    /// existing file refused (and left alone) unless `--force`.
    @Test func theCommandWritesThePage() async throws {
        try await ServerHarness.with(manualClock: true) { (h: ServerHarness) async throws in
            let t = try await Self.populate(h)
            let dir = try BrowserRun.temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let file = dir + "/page.html"
            func report(_ extra: [String], token: [UInt8] = t.adminToken) throws -> BrowserRun.Result {
                try BrowserRun.run(shredvaultTestBinary, ["report", "--socket", h.socket] + extra, in: dir, name: "cli-\(UUID().uuidString.prefix(6))",
                                   environment: ["SHREDVAULT_TOKEN": String(decoding: token, as: UTF8.self)], seconds: 30)
            }
            let wrote = try report(["--html", file])
            #expect(wrote.status == 0, "\(wrote.stderr)")
            #expect(wrote.stdout.hasPrefix("wrote the transparency page to \(file) ("))
            let written = try String(contentsOfFile: file, encoding: .utf8)
            #expect(written.hasPrefix("<!DOCTYPE html>"))
            #expect(written.contains(#"<span id="tenant">acme-eu</span>"#) && written.contains(#"id="holds">2<"#))
            #expect(written.components(separatedBy: #"<rect class="day""#).count - 1 == 92)
            let mode = (try FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? Int) ?? 0
            #expect(mode == 0o644)

            try Data("keep me".utf8).write(to: URL(fileURLWithPath: file))
            let refused = try report(["--html", file])
            #expect(refused.status == 1)
            #expect(refused.stderr == "shredvault: \(file) already exists; refusing to overwrite it (--force replaces it)\n")
            #expect(try String(contentsOfFile: file, encoding: .utf8) == "keep me")
            let forced = try report(["--html", file, "--force"])
            #expect(forced.status == 0, "\(forced.stderr)")
            #expect(try String(contentsOfFile: file, encoding: .utf8).hasPrefix("<!DOCTYPE html>"))
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".tmp-") }.isEmpty)

            // An agent gets the daemon's refusal, and no file.
            let agentFile = dir + "/agent.html"
            let agent = try report(["--html", agentFile], token: t.agentToken)
            #expect(agent.status == 1)
            #expect(agent.stderr.hasPrefix("shredvault: 403 "), "\(agent.stderr)")
            #expect(!FileManager.default.fileExists(atPath: agentFile))
            // Bad combinations are usage errors.
            #expect(try report(["--force"]).status != 0)
            #expect(try report(["--html", file, "--json"]).status != 0)
        }
    }

    static func checkDOM(_ dom: String) throws {
        #expect(dom.contains(#"<span id="tenant">acme-eu</span>"#))
        for (id, value) in [("records", "9"), ("holds", "2"), ("category-personal", "4"), ("category-privacy_related", "3"),
                            ("category-non_personal", "2"), ("channel-phone", "3"), ("channel-email", "1"),
                            ("channel-chat", "3"), ("channel-sms", "1"), ("channel-web", "1"), ("channel-other", "0"),
                            ("retention-default", "P92D"), ("retention-privacy_related", "P7D"),
                            ("retention-non_personal", "P180D"), ("retention-personal", "P92D"), ("extensions-in-force", "1")] {
            #expect(dom.contains("id=\"\(id)\">\(value)<"), "\(id) = \(value) in the DOM")
        }
        // The client's reference is text in the browser, not markup.
        #expect(dom.contains(#"<td class="ref">QA &lt;b&gt;contract&lt;/b&gt; &amp; "7" &lt;script&gt;alert(1)&lt;/script&gt;</td>"#))
        #expect(!dom.contains("<b>") && !dom.lowercased().contains("<script"))
        #expect(dom.contains("<td>quality</td>"))
        // 92 bars, each with its title; the counts the report gave.
        let bar = try NSRegularExpression(pattern:
            #"<rect class="day" data-date="(\d{4}-\d{2}-\d{2})" data-records="(\d+)"[^>]*><title>(\d{4}-\d{2}-\d{2}): (\d+) records?</title></rect>"#)
        let bars = bar.matches(in: dom, range: NSRange(dom.startIndex..., in: dom))
        #expect(dom.components(separatedBy: "<rect ").count - 1 == 92, "rect elements in the DOM")
        #expect(bars.count == 92, "bars with a title")
        func group(_ m: NSTextCheckingResult, _ i: Int) -> String { String(dom[Range(m.range(at: i), in: dom)!]) }
        for (day, m) in bars.enumerated() {
            let records = Self.expectedDays[day] ?? 0
            #expect(Int(group(m, 2)) == records && Int(group(m, 4)) == records, "day \(day)")
            #expect(group(m, 1) == group(m, 3))
        }
        #expect(bars.first.map { group($0, 1) } == "2027-01-15", "day 0 is the manual clock's date")
        #expect(bars.last.map { group($0, 1) } == "2027-04-16")
    }
}

/// Running Chromium (and the PNG reader) under a deadline, with a throwaway profile and HOME.
enum BrowserRun {
    struct Result {
        var status: Int32
        /// Killed by a signal (`status` is then the signal's number) rather than exited.
        var signalled = false
        var stdout: String
        var stderr: String
        var seconds: Double
    }

    struct Pixels: CustomStringConvertible {
        var width = 0, height = 0, row = -1, bars = 0, zeroBars = 0, barWidth = 0
        var description: String { "\(width)x\(height), row \(row): \(bars) bars, \(zeroBars) zero bars, bar width \(barWidth)" }
    }

    static func temporaryDirectory() throws -> String {
        var template = Array("/tmp/sv-page-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw CocoaError(.fileWriteUnknown)
        }
        return String(cString: made)
    }

    /// Headless Chromium on one page, killed with its whole process group after 60 s
    /// (coreutils `timeout` makes the group; Chromium's helpers die with it). It inherits the
    /// test process's umask, which no daemon started by another test touches (the socket is
    /// bound in a private directory: `ResourceFaultTests.bindingTheSocketNeverChangesTheProcessUmask`).
    static func chromium(_ binary: String, _ arguments: [String], in dir: String, name: String) throws -> Result {
        let home = dir + "/home-" + name
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
        return try run("/usr/bin/timeout", ["--kill-after=5", "60", binary,
                                            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                            "--user-data-dir=" + home + "/profile", "--no-first-run", "--no-default-browser-check",
                                            "--disable-extensions", "--disable-background-networking", "--disable-sync",
                                            "--host-resolver-rules=MAP * ~NOTFOUND",  // the page needs no network
                                            "--window-size=1200,2000", "--force-device-scale-factor=1", "--hide-scrollbars"]
                       + arguments, in: dir, name: name, environment: ["HOME": home], seconds: 75)
    }

    static func run(_ executable: String, _ arguments: [String], in dir: String, name: String,
                    environment extra: [String: String] = [:], seconds deadline: Double) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: dir)
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("SHREDVAULT_") }
        environment.merge(extra) { _, new in new }
        process.environment = environment
        let out = dir + "/\(name).stdout", err = dir + "/\(name).stderr"
        FileManager.default.createFile(atPath: out, contents: nil)
        FileManager.default.createFile(atPath: err, contents: nil)
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: err))
        process.standardInput = FileHandle.nullDevice
        let start = Date()
        try process.run()
        let end = start.addingTimeInterval(deadline)
        while process.isRunning && Date() < end { usleep(20_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
        }
        process.waitUntilExit()
        return Result(status: process.terminationStatus, signalled: process.terminationReason == .uncaughtSignal,
                      stdout: (try? String(contentsOfFile: out, encoding: .utf8)) ?? "",
                      stderr: (try? String(contentsOfFile: err, encoding: .utf8)) ?? "",
                      seconds: Date().timeIntervalSince(start))
    }

    /// Decodes the PNG with python3's standard library (zlib, struct) and counts, along the
    /// chart's lowest row of bar colour, the runs of bar colour (days with expiries) and of
    /// the zero colour (days without), and the bars' width in pixels.
    static func barColumns(_ png: String, in dir: String) throws -> Pixels {
        let script = dir + "/bars.py"
        try pngScript.write(toFile: script, atomically: true, encoding: .utf8)
        let r = try run("/usr/bin/env", ["python3", script, png, ReportPage.Chart.barFill, ReportPage.Chart.zeroFill],
                        in: dir, name: "bars", seconds: 120)
        guard r.status == 0 else { throw PixelError(description: "bars.py failed (\(r.status)): \(r.stderr.suffix(1500))") }
        let fields = r.stdout.split(whereSeparator: \.isWhitespace).compactMap { Int($0) }
        guard fields.count == 6 else { throw PixelError(description: "bars.py said: \(r.stdout)") }
        return Pixels(width: fields[0], height: fields[1], row: fields[2], bars: fields[3], zeroBars: fields[4], barWidth: fields[5])
    }

    struct PixelError: Error, CustomStringConvertible { let description: String }

    static let pngScript = #"""
        import struct, sys, zlib

        path, bar, zero = sys.argv[1], sys.argv[2], sys.argv[3]
        def rgb(h): return tuple(int(h[i:i + 2], 16) for i in (1, 3, 5))
        bar, zero = rgb(bar), rgb(zero)
        data = open(path, "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
        pos, idat = 8, []
        while pos < len(data):
            n, kind = struct.unpack(">I4s", data[pos:pos + 8])
            body = data[pos + 8:pos + 8 + n]
            pos += 12 + n
            if kind == b"IHDR":
                w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            elif kind == b"IDAT":
                idat.append(body)
            elif kind == b"IEND":
                break
        assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype, interlace)
        bpp = 3 if ctype == 2 else 4
        raw, stride = zlib.decompress(b"".join(idat)), w * bpp
        rows, prev, i = [], bytes(stride), 0
        for y in range(h):
            f, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
            i += 1 + stride
            if f == 1:
                for x in range(bpp, stride): line[x] = (line[x] + line[x - bpp]) & 255
            elif f == 2:
                line = bytearray((a + b) & 255 for a, b in zip(line, prev))
            elif f == 3:
                for x in range(stride): line[x] = (line[x] + (((line[x - bpp] if x >= bpp else 0) + prev[x]) >> 1)) & 255
            elif f == 4:
                for x in range(stride):
                    a = line[x - bpp] if x >= bpp else 0
                    b, c = prev[x], (prev[x - bpp] if x >= bpp else 0)
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
            rows.append(bytes(line))
            prev = line
        def near(px, c): return all(abs(px[k] - c[k]) <= 6 for k in range(3))
        def pixels(y): return [rows[y][x * bpp:x * bpp + 3] for x in range(w)]
        def runs(ps, c):
            out, start = [], None
            for x, px in enumerate(ps + [b"\0\0\0"]):
                if near(px, c) and start is None: start = x
                elif not near(px, c) and start is not None: out.append(x - start); start = None
            return out
        lowest = max((y for y in range(h) if bar in set(tuple(p) for p in pixels(y))), default=-1)
        if lowest < 0:
            # No exact match: fall back to the tolerance (a colour-managed screenshot).
            lowest = max((y for y in range(h) if any(near(p, bar) for p in pixels(y))), default=-1)
        if lowest < 0:
            print(w, h, -1, 0, 0, 0)
        else:
            ps = pixels(lowest)
            b, z = runs(ps, bar), runs(ps, zero)
            print(w, h, lowest, len(b), len(z), max(b) if b else 0)
        """#
}
