import Foundation
import Testing
@testable import VaultCore
import VaultServer

/// The transparency page's renderer as a pure function: escaping, the 92 bars, nothing
/// external, and the Accept negotiation. The browser test (ReportPageBrowserTests) renders it.
@Suite struct ReportPageTests {
    static let now: Int64 = 1_800_000_000_000  // 2027-01-15T08:00:00Z

    static func report(reference: String = "contract-7") -> TenantReport {
        let contract = RetentionExtension(id: "01KZZZZZZZZZZZZZZZZZZZZZZZ", purpose: .quality, reference: reference,
                                          retentionSeconds: 180 * 86_400, categories: [.nonPersonal],
                                          until: now + 365 * 86_400_000, createdAt: now - 1000, endedAt: nil)
        let ended = RetentionExtension(id: "01KZZZZZZZZZZZZZZZZZZZZZZY", purpose: .legal, reference: "old-contract",
                                       retentionSeconds: 120 * 86_400, categories: [.personal],
                                       until: now + 86_400_000, createdAt: now - 5000, endedAt: now - 10)
        var r = TenantReport(retention: RetentionState(
            policy: RetentionPolicy(defaultSeconds: 92 * 86_400, categories: [.privacyRelated: 7 * 86_400, .nonPersonal: 180 * 86_400]),
            extensions: [contract, ended]))
        r.records = 1234
        r.bytes = 5_678_901
        r.byCategory = [.personal: 1000, .privacyRelated: 234]
        r.byChannel = [.phone: 1200, .chat: 34]
        r.holds = 3
        r.expiriesPerDay[0] = 5
        r.expiriesPerDay[6] = 1
        r.expiriesPerDay[91] = 12
        return r
    }

    static func count(_ needle: String, in text: String) -> Int { text.components(separatedBy: needle).count - 1 }

    @Test func escapingNeutralisesMarkup() {
        #expect(ReportPage.escape(#"<script>alert("x")</script>"#) == "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;")
        #expect(ReportPage.escape("Tom & Jerry's <b>") == "Tom &amp; Jerry&#39;s &lt;b&gt;")
        #expect(ReportPage.escape("&amp;") == "&amp;amp;", "an entity is text, escaped again")
        #expect(ReportPage.escape(#"" onmouseover="x"#) == "&quot; onmouseover=&quot;x")
        #expect(ReportPage.escape("a\u{0}b\u{1b}c\u{7f}d\u{85}e") == "a\u{FFFD}b\u{FFFD}c\u{FFFD}d\u{FFFD}e")
        #expect(ReportPage.escape("tab\tline\nreturn\r ok, é ✓ 😀") == "tab\tline\nreturn\r ok, é ✓ 😀")
        #expect(ReportPage.escape("") == "")
    }

    @Test func hostileStringsStayText() {
        let hostile = #"<script>alert(1)</script><img src=x onerror="alert(2)"> & 'q' "dq""#
        let page = ReportPage.render(Self.report(reference: hostile), tenant: "acme<script>", now: Self.now)
        #expect(!page.lowercased().contains("<script"))
        #expect(!page.contains("<img"))
        #expect(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=&quot;alert(2)&quot;&gt; &amp; &#39;q&#39; &quot;dq&quot;"))
        #expect(page.contains(#"<span id="tenant">acme&lt;script&gt;</span>"#))
        #expect(page.contains("<title>Data held for acme&lt;script&gt;: transparency report</title>"))
    }

    @Test func nothingExternalAndNoScript() {
        let page = ReportPage.render(Self.report(), tenant: "acme", now: Self.now).lowercased()
        for forbidden in ["<script", "http://", "https://", "src=", "href=", "url(", "@import", "<link", "<img", "<iframe",
                          "<object", "<embed", "<form", "<base", "//fonts", "javascript:"] {
            #expect(!page.contains(forbidden), "\(forbidden)")
        }
        // No event-handler attribute anywhere (onload=, onclick=, ...).
        #expect(page.range(of: #"\son[a-z]+\s*="#, options: .regularExpression) == nil)
        #expect(page.hasPrefix("<!doctype html>\n<html lang=\"en\">"))
        #expect(page.contains(#"<meta charset="utf-8">"#))
        #expect(page.contains("content-security-policy"))
        #expect(page.hasSuffix("</html>\n"))
    }

    @Test func ninetyTwoBarsEachWithItsDateAndCount() throws {
        let page = ReportPage.render(Self.report(), tenant: "acme", now: Self.now)
        #expect(Self.count(#"<rect class="day""#, in: page) == 92)
        let bar = try NSRegularExpression(pattern:
            #"<rect class="day" data-date="(\d{4}-\d{2}-\d{2})" data-records="(\d+)" x="(\d+)" y="(\d+)" width="7" height="(\d+)" fill="(#[0-9a-f]{6})"><title>(\d{4}-\d{2}-\d{2}): (\d+) records?</title></rect>"#)
        let matches = bar.matches(in: page, range: NSRange(page.startIndex..., in: page))
        #expect(matches.count == 92)
        func group(_ m: NSTextCheckingResult, _ i: Int) -> String { String(page[Range(m.range(at: i), in: page)!]) }
        let expected = Self.report().expiriesPerDay
        var lastX = -1
        for (day, m) in matches.enumerated() {
            let date = String(RFC3339.format(milliseconds: Self.now + Int64(day) * 86_400_000).prefix(10))
            #expect(group(m, 1) == date && group(m, 7) == date, "day \(day)")
            #expect(Int(group(m, 2)) == expected[day] && Int(group(m, 8)) == expected[day], "day \(day)")
            let x = Int(group(m, 3))!, height = Int(group(m, 5))!
            #expect(x > lastX)
            lastX = x
            if expected[day] == 0 {
                #expect(height == ReportPage.Chart.zeroHeight && group(m, 6) == ReportPage.Chart.zeroFill, "day \(day)")
            } else {
                #expect(height >= ReportPage.Chart.minimumHeight && group(m, 6) == ReportPage.Chart.barFill, "day \(day)")
            }
            // Every bar stands on the same baseline.
            #expect(Int(group(m, 4))! + height == ReportPage.Chart.top + ReportPage.Chart.plotHeight)
        }
        #expect(Int(group(matches[91], 5)) == ReportPage.Chart.plotHeight, "the tallest day fills the plot")
        #expect(page.contains("<title>2027-01-15: 5 records</title>"))
        #expect(page.contains("<title>2027-01-21: 1 record</title>"))
        #expect(page.contains("<title>2027-04-16: 12 records</title>"))
        // The bar colour is the chart's alone (the browser test finds bars by it).
        #expect(Self.count(ReportPage.Chart.barFill, in: page) == 3)
    }

    @Test func theDataMapRetentionAndHolds() {
        let page = ReportPage.render(Self.report(), tenant: "acme", now: Self.now)
        for (id, value) in [("records", "1,234"), ("bytes", "5,678,901"), ("holds", "3"), ("held-past-expiry", "0"),
                            ("category-personal", "1,000"), ("category-non_personal", "0"), ("category-privacy_related", "234"),
                            ("channel-phone", "1,200"), ("channel-chat", "34"), ("channel-other", "0"),
                            ("retention-default", "P92D"), ("retention-personal", "P92D"),
                            ("retention-privacy_related", "P7D"), ("retention-non_personal", "P180D"),
                            ("extensions-in-force", "1")] {
            #expect(page.contains("id=\"\(id)\">\(value)<"), "\(id)")
        }
        #expect(page.contains(#"<td class="ref">contract-7</td>"#))
        #expect(!page.contains("old-contract"), "an ended contract is not in force")
        #expect(page.contains("1 ended or expired contract not shown"))
        // With no contract in force, P180D for non_personal falls back to the standard maximum.
        var plain = Self.report()
        plain.retention = RetentionState(policy: plain.retention.policy, extensions: [])
        let fallback = ReportPage.render(plain, tenant: "acme", now: Self.now)
        #expect(fallback.contains(#"id="retention-non_personal">P92D<"#))
        #expect(fallback.contains("None: no record is kept longer than P92D."))
    }

    @Test func acceptNegotiation() {
        let html = ["text/html", "text/html; charset=utf-8", "TEXT/HTML", "text/*",
                    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
                    "application/json;q=0.5, text/html", "*/*;q=0.1, text/html;q=0.2"]
        let json = ["", "*/*", "application/json", "application/json, text/html", "text/html, application/json",
                    "text/html;q=0", "text/html;q=0.5, application/json", "text/plain", "application/*, text/html;q=0.9",
                    "text/html;q=0.5, */*", "garbage;;", ","]
        for a in html { #expect(ReportPage.prefersHTML([a]), "\(a)") }
        for a in json { #expect(!ReportPage.prefersHTML([a]), "\(a)") }
        #expect(!ReportPage.prefersHTML([]))
        #expect(ReportPage.prefersHTML(["application/json;q=0.1", "text/html"]), "several Accept lines are one list")
    }
}
