import ArgumentParser
import Foundation

extension DiscoClient {
    /// GET /v1/snapshot: the leader's state machines as a snapshot container.
    public func saveSnapshot() throws -> Data {
        let response = try request("GET", "/v1/snapshot")
        try expectSuccess(response)
        return response.body
    }

    /// PUT /v1/snapshot: the server validates the whole snapshot before anything changes.
    public func restoreSnapshot(_ snapshot: Data) throws {
        try expectSuccess(try request("PUT", "/v1/snapshot", body: snapshot))
    }

    func expectSuccess(_ response: Response) throws {
        guard (200..<300).contains(response.status) else {
            let text = String(decoding: response.body, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            throw ClientError("discod answered \(response.status): \(text.isEmpty ? "no details" : text)")
        }
    }
}

struct SnapshotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot", abstract: "Save or restore the cluster's state (every state machine) as one file.",
        subcommands: [Save.self, Restore.self])

    struct Save: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write the leader's current state to FILE.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The file to write (replaced only once the whole snapshot arrived).") var file: String

        func run() throws {
            try reporting {
                let data = try options.client.saveSnapshot()
                // Written beside the target, then renamed: FILE is either the old file or the whole snapshot.
                let temporary = file + ".partial"
                do {
                    try data.write(to: URL(fileURLWithPath: temporary))
                    if FileManager.default.fileExists(atPath: file) { try FileManager.default.removeItem(atPath: file) }
                    try FileManager.default.moveItem(atPath: temporary, toPath: file)
                } catch {
                    try? FileManager.default.removeItem(atPath: temporary)
                    throw ClientError("\(file): cannot write: \(error.localizedDescription)")
                }
                if options.json { options.printJSON(["File": file, "Bytes": data.count]) } else { print("saved \(data.count) bytes to \(file)") }
            }
        }
    }

    struct Restore: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Replace the cluster's state with FILE on every server (validated completely first).")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "A file written by `discoctl snapshot save`.") var file: String

        func run() throws {
            try reporting {
                let data: Data
                do {
                    data = try Data(contentsOf: URL(fileURLWithPath: file))
                } catch {
                    throw ClientError("\(file): cannot read: \(error.localizedDescription)")
                }
                do {
                    try options.client.restoreSnapshot(data)
                } catch let error as ClientError {
                    throw ClientError("\(file): \(error.message)")
                }
                if options.json { options.printJSON(["File": file, "Bytes": data.count]) } else { print("restored \(file)") }
            }
        }
    }
}
