import Foundation
public import VaultCore

/// The transparency page (`GET /v1/report` with `Accept: text/html`, `shredvault report
/// --html FILE`): the tenant's data map as one self-contained HTML page, inline CSS and
/// inline SVG, no script, no external reference of any kind (fonts, images, links), so it
/// can be mailed, archived or opened offline as it is.
///
/// It holds counts and policy only, never record content: what `TenantReport` has. Every
/// string that is not the page's own (the tenant slug, contract references) goes through
/// `escape`.
public enum ReportPage {
    /// Days on the expiry chart, one bar each (the report's `expiriesPerDay`).
    public static let days = 92

    /// The page: `report` as `GET /v1/report` computed it for `tenant` at `now` (ms).
    public static func render(_ report: TenantReport, tenant: String, now: Int64) -> String {
        let t = escape(tenant)
        var h = """
            <!DOCTYPE html>
            <html lang="en">
            <head>
            <meta charset="utf-8">
            <meta http-equiv="Content-Security-Policy" content="\(contentSecurityPolicy)">
            <meta name="viewport" content="width=device-width, initial-scale=1">
            <title>Data held for \(t): transparency report</title>
            <style>\(style)</style>
            </head>
            <body>
            <h1>Data held for <span id="tenant">\(t)</span></h1>
            <p class="meta">Generated <time id="generated-at">\(RFC3339.format(milliseconds: now))</time> by ShredVault.
            Counts and policy only: this page contains no record content.</p>

            """
        h += section("Summary") + "<dl class=\"summary\">\n"
        h += item("Live records", "records", number(report.records))
        h += item("Ciphertext bytes", "bytes", number(report.bytes))
        h += item("Oldest record", "oldest-record", report.oldestCreatedAt.map { RFC3339.format(milliseconds: $0) } ?? "none")
        h += item("Legal holds in place", "holds", number(report.holds))
        h += item("Records kept past expiry by a hold", "held-past-expiry", number(report.heldPastExpiry))
        h += "</dl>\n</section>\n"

        h += section("Data map")
        h += countTable("By category", "category", DataCategory.allCases.map { ($0.rawValue, report.byCategory[$0] ?? 0) })
        h += countTable("By channel", "channel", Channel.allCases.map { ($0.rawValue, report.byChannel[$0] ?? 0) })
        h += "</section>\n"

        h += retention(report.retention, now: now)
        h += section("Expiries per day, next \(days) days") + chart(report.expiriesPerDay, now: now) + "</section>\n"
        h += "</body>\n</html>\n"
        return h
    }

    /// Nothing may load or run: no script, no connection, no frame; only the inline style.
    public static let contentSecurityPolicy = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

    /// Text safe in HTML content and in a double- or single-quoted attribute value: `&`, `<`,
    /// `>`, `"` and `'` as character references; control characters other than tab, line
    /// feed and carriage return (which HTML does not allow) as U+FFFD.
    public static func escape(_ text: String) -> String {
        var out = ""
        out.unicodeScalars.reserveCapacity(text.unicodeScalars.count)
        for s in text.unicodeScalars {
            switch s {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            case "\t", "\n", "\r": out.unicodeScalars.append(s)
            case _ where s.value < 0x20 || (0x7F...0x9F).contains(s.value): out += "\u{FFFD}"
            default: out.unicodeScalars.append(s)
            }
        }
        return out
    }

    /// Whether an `Accept` header (all its lines) asks for the page rather than the JSON: the
    /// page only when `text/html` ranks strictly above `application/json` by the most specific
    /// range naming each (RFC 9110, 12.5.1), so no header, `*/*` and `application/json` keep
    /// the JSON, and a browser's `text/html,...,*/*;q=0.8` gets the page.
    public static func prefersHTML(_ accept: [String]) -> Bool {
        var html: (specificity: Int, q: Double) = (-1, 0), json: (specificity: Int, q: Double) = (-1, 0)
        for range in accept.joined(separator: ",").split(separator: ",") {
            let parts = range.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
            guard let type = parts.first, !type.isEmpty else { continue }
            var q = 1.0
            for parameter in parts.dropFirst() where parameter.hasPrefix("q=") {
                q = min(max(Double(parameter.dropFirst(2)) ?? 0, 0), 1)
            }
            func rank(_ specific: String, _ family: String) -> Int? {
                type == specific ? 2 : type == family ? 1 : type == "*/*" ? 0 : nil
            }
            if let r = rank("text/html", "text/*"), r > html.specificity { html = (r, q) }
            if let r = rank("application/json", "application/*"), r > json.specificity { json = (r, q) }
        }
        return html.q > 0 && html.q > json.q
    }

    // MARK: - Sections

    static func retention(_ state: RetentionState, now: Int64) -> String {
        var h = section("Retention rules in force")
        h += "<p>Records are kept for their category's retention from collection, then their keys are destroyed. "
        h += "Default: <span id=\"retention-default\">\(ISODuration.format(seconds: state.policy.defaultSeconds))</span>.</p>\n"
        h += "<table>\n<thead><tr><th scope=\"col\">Category</th><th scope=\"col\">Policy</th>"
        h += "<th scope=\"col\">New records now (at most)</th></tr></thead>\n<tbody>\n"
        for c in DataCategory.allCases {
            let policy = state.policy.categories[c].map { ISODuration.format(seconds: $0) } ?? "default"
            let applied = ISODuration.format(seconds: state.effectiveSeconds(for: c, at: now))
            h += "<tr><th scope=\"row\">\(c.rawValue)</th><td>\(policy)</td>"
            h += "<td id=\"retention-\(c.rawValue)\">\(applied)</td></tr>\n"
        }
        h += "</tbody>\n</table>\n"

        let inForce = state.extensions.filter { $0.isActive(at: now) }
        h += "<h3>Extension contracts in force (<span id=\"extensions-in-force\">\(inForce.count)</span>)</h3>\n"
        if inForce.isEmpty {
            h += "<p>None: no record is kept longer than P92D.</p>\n"
        } else {
            h += "<table id=\"extensions\">\n<thead><tr><th scope=\"col\">Purpose</th><th scope=\"col\">Reference</th>"
            h += "<th scope=\"col\">Retention</th><th scope=\"col\">Categories</th><th scope=\"col\">Since</th>"
            h += "<th scope=\"col\">Until</th></tr></thead>\n<tbody>\n"
            for e in inForce {
                h += "<tr><td>\(escape(e.purpose.rawValue))</td><td class=\"ref\">\(escape(e.reference))</td>"
                h += "<td>\(ISODuration.format(seconds: e.retentionSeconds))</td>"
                h += "<td>\(escape(e.categories.map(\.rawValue).joined(separator: ", ")))</td>"
                h += "<td>\(RFC3339.format(milliseconds: e.createdAt))</td><td>\(RFC3339.format(milliseconds: e.until))</td></tr>\n"
            }
            h += "</tbody>\n</table>\n"
        }
        let past = state.extensions.count - inForce.count
        if past > 0 {
            h += "<p class=\"meta\">\(past) ended or expired contract\(past == 1 ? "" : "s") not shown "
            h += "(records written under them keep the expiry they were given).</p>\n"
        }
        return h + "</section>\n"
    }

    /// The bar chart: one `<rect class="day">` per day, each with a `<title>` of its date and
    /// count; a day without expiries is a low grey bar, so there are always `days` bars.
    static func chart(_ perDay: [Int], now: Int64) -> String {
        let counts = (0..<days).map { $0 < perDay.count ? perDay[$0] : 0 }
        let peak = max(counts.max() ?? 0, 1)
        let step = Chart.step, left = Chart.left, top = Chart.top, plot = Chart.plotHeight
        let width = left + days * step + 10, height = top + plot + 34
        let total = counts.reduce(0, +)
        var h = "<p>\(number(total)) record\(total == 1 ? "" : "s") expire in the next \(days) days "
        h += "(day 1 is the next 24 hours, dated in UTC); the tallest bar is \(number(peak)).</p>\n"
        h += "<svg id=\"expiries\" width=\"\(width)\" height=\"\(height)\" "
        h += "viewBox=\"0 0 \(width) \(height)\" role=\"img\" aria-labelledby=\"expiries-title\" shape-rendering=\"crispEdges\">\n"
        h += "<title id=\"expiries-title\">Records expiring per day over the next \(days) days</title>\n"
        let baseline = top + plot
        // Lines on half pixels: each covers one whole pixel row or column, beside the bars, not over them.
        h += "<line x1=\"\(left - 2).5\" y1=\"\(top)\" x2=\"\(left - 2).5\" y2=\"\(baseline + 1)\" stroke=\"\(Chart.axis)\"/>\n"
        h += "<text x=\"\(left - 6)\" y=\"\(top + 4)\" text-anchor=\"end\">\(peak)</text>\n"
        h += "<text x=\"\(left - 6)\" y=\"\(baseline)\" text-anchor=\"end\">0</text>\n"
        for (day, count) in counts.enumerated() {
            let date = String(RFC3339.format(milliseconds: now + Int64(day) * 86_400_000).prefix(10))
            let x = left + day * step
            let barHeight = count == 0 ? Chart.zeroHeight : max(Chart.minimumHeight, (count * plot + peak / 2) / peak)
            let fill = count == 0 ? Chart.zeroFill : Chart.barFill
            h += "<rect class=\"day\" data-date=\"\(date)\" data-records=\"\(count)\" x=\"\(x)\" y=\"\(baseline - barHeight)\" "
            h += "width=\"\(Chart.barWidth)\" height=\"\(barHeight)\" fill=\"\(fill)\">"
            h += "<title>\(date): \(count) record\(count == 1 ? "" : "s")</title></rect>\n"
            if day % 14 == 0 {
                h += "<text x=\"\(x)\" y=\"\(baseline + 16)\">\(date.dropFirst(5))</text>\n"
            }
        }
        h += "<line x1=\"\(left - 2)\" y1=\"\(baseline).5\" x2=\"\(left + days * step)\" y2=\"\(baseline).5\" stroke=\"\(Chart.axis)\"/>\n"
        h += "<text x=\"\(left)\" y=\"\(baseline + 32)\">date (MM-DD, UTC); hover a bar for its date and count</text>\n"
        h += "</svg>\n"
        return h
    }

    /// The chart's geometry and colours, in CSS pixels (the browser test reads them).
    public enum Chart {
        public static let left = 48, top = 12, plotHeight = 160, step = 10, barWidth = 7
        public static let minimumHeight = 3, zeroHeight = 1
        /// Days with expiries; no other element of the page has this colour.
        public static let barFill = "#1f6feb"
        public static let zeroFill = "#b4bac2"
        static let axis = "#57606a"
    }

    // MARK: - Pieces

    static func section(_ title: String) -> String { "<section>\n<h2>\(title)</h2>\n" }

    static func item(_ term: String, _ id: String, _ value: String) -> String {
        "<dt>\(term)</dt><dd id=\"\(id)\">\(escape(value))</dd>\n"
    }

    static func countTable(_ caption: String, _ kind: String, _ rows: [(String, Int)]) -> String {
        var h = "<table class=\"counts\">\n<caption>\(caption)</caption>\n"
        h += "<thead><tr><th scope=\"col\">\(kind)</th><th scope=\"col\">records</th></tr></thead>\n<tbody>\n"
        for (name, count) in rows {
            h += "<tr><th scope=\"row\">\(name)</th><td id=\"\(kind)-\(name)\">\(number(count))</td></tr>\n"
        }
        return h + "</tbody>\n</table>\n"
    }

    /// 1234567 as "1,234,567".
    static func number(_ n: Int) -> String {
        let digits = String(n.magnitude)
        var out = ""
        for (i, d) in digits.enumerated() {
            if i > 0 && (digits.count - i) % 3 == 0 { out += "," }
            out.append(d)
        }
        return n < 0 ? "-" + out : out
    }

    static let style = """
        body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;color:#1f2328;background:#fff;margin:2rem auto;\
        max-width:1040px;padding:0 1rem;line-height:1.4}\
        h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;border-bottom:1px solid #d0d7de;padding-bottom:.2rem;\
        margin-top:2rem}h3{font-size:1rem}.meta{color:#57606a;font-size:.9rem}\
        dl.summary{display:grid;grid-template-columns:max-content auto;gap:.2rem 1.5rem}dt{color:#57606a}dd{margin:0;\
        font-variant-numeric:tabular-nums}\
        table{border-collapse:collapse;margin:.5rem 2rem 1rem 0}table.counts{display:inline-table;vertical-align:top}\
        caption{text-align:left;font-weight:600;padding-bottom:.3rem}th,td{border:1px solid #d0d7de;padding:.25rem .6rem;\
        text-align:left}td{font-variant-numeric:tabular-nums}thead th{background:#f6f8fa}\
        td.ref{word-break:break-all;max-width:24rem}\
        svg text{font-size:11px;fill:#57606a}
        """
}
