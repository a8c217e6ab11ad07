import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// How discod writes its log lines to standard error (issue 17.4).
public enum LogFormat: String, Sendable, CaseIterable {
    /// `2026-12-04T00:23:36+0000 info discod: key=value [Module] message`, as swift-log's stream
    /// handler writes it; under systemd's journal (`JOURNAL_STREAM` naming standard error) the
    /// timestamp gives way to a `<N>` syslog priority, which journald reads and strips.
    case text
    /// One JSON object a line (`time`, `level`, `label`, `source`, `message`, `metadata`), for log
    /// shippers.
    case json
}

/// discod's log handler: swift-log's stream format, journald-aware, or JSON. One `write(2)` per
/// line, so lines from different threads never interleave.
public struct DiscoLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    private let label: String
    private let format: LogFormat
    private let journal: Bool

    public init(label: String, level: Logger.Level, format: LogFormat, journal: Bool) {
        self.label = label
        self.logLevel = level
        self.format = format
        self.journal = journal
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// Whether standard error is the journal: systemd sets `JOURNAL_STREAM` to the device and
    /// inode of the stream it connected (sd_journal_stream_fd), which a redirected stderr is not.
    public static func stderrIsJournal(environment: [String: String]) -> Bool {
        guard let value = environment["JOURNAL_STREAM"] else { return false }
        let parts = value.split(separator: ":")
        guard parts.count == 2, let device = UInt64(parts[0]), let inode = UInt64(parts[1]) else { return false }
        var info = stat()
        guard fstat(STDERR_FILENO, &info) == 0 else { return false }
        return UInt64(info.st_dev) == device && UInt64(info.st_ino) == inode
    }

    /// The syslog priority of a level (sd-daemon(3)'s `<N>` prefixes).
    static func syslogPriority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    public func log(level: Logger.Level, message: Logger.Message, metadata explicit: Logger.Metadata?, source: String,
                    file: String, function: String, line: UInt) {
        var all = metadata
        if let explicit { all.merge(explicit) { $1 } }
        let text: String
        switch format {
        case .json:
            var fields = [
                "\"time\":\(Self.jsonString(Self.timestamp()))",
                "\"level\":\(Self.jsonString(level.rawValue))",
                "\"label\":\(Self.jsonString(label))",
                "\"source\":\(Self.jsonString(source))",
                "\"message\":\(Self.jsonString(message.description))",
            ]
            if !all.isEmpty {
                let pairs = all.sorted { $0.key < $1.key }.map { "\(Self.jsonString($0.key)):\(Self.jsonString("\($0.value)"))" }
                fields.append("\"metadata\":{\(pairs.joined(separator: ","))}")
            }
            text = "{\(fields.joined(separator: ","))}\n"
        case .text:
            let pretty = all.isEmpty ? "" : " " + all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            let head = journal ? "<\(Self.syslogPriority(level))>" : "\(Self.timestamp()) \(level) "
            text = "\(head)\(label):\(pretty) [\(source)] \(message)\n"
        }
        var bytes = Array(text.utf8)
        bytes.withUnsafeMutableBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = Glibc.write(STDERR_FILENO, buffer.baseAddress! + offset, buffer.count - offset)
                if written < 0 && errno == EINTR { continue }
                if written <= 0 { return }
                offset += written
            }
        }
    }

    /// `2026-12-04T00:23:36+0000`, as swift-log's stream handler writes it (local time).
    static func timestamp() -> String {
        var now = time(nil)
        var parts = tm()
        localtime_r(&now, &parts)
        var buffer = [CChar](repeating: 0, count: 32)
        let count = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%S%z", &parts)
        return String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// A JSON string literal (RFC 8259 §7: quote, backslash and control characters escaped).
    static func jsonString(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
