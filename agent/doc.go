// Package agent is the agent transport: `mirrorfs agent --root DIR` runs on
// a worker over an SSH exec channel (as rsync runs `rsync --server`) and
// applies what the master sends below DIR; [Client] is the master's side, a
// replicate.Transport with the optional LinkAttrs, Xattrs and Special
// capabilities that SFTP v3 lacks.
//
// The protocol (wire.go) is versioned and length-prefixed: every frame is a
// 4-byte big-endian length and a body. The master's first request is hello
// with the protocol [Version]; the agent answers with its [BuildID]. Then
// each request gets one answer, in order, except a directory listing,
// answered in as many frames as it needs (none larger than the frame
// limit, whatever the directory's size), and the data frames of a file
// transfer: WriteBegin, any number of WriteData (offset and bytes, sent
// without waiting: holes are not sent) and WriteEnd (total size) or
// WriteAbort, answered once with the outcome. The agent writes the data to
// a temp file beside the target, fsyncs it, sets its attributes and renames
// it over the target, through replicate.Local, which resolves every path
// below the root without following symlinks. A ping, which an idle master
// sends every [PingInterval], gets no answer: it only tells an agent run
// with --idle-exit that its master is still there.
//
// [Dial] uploads the master's own binary to ~/.cache/mirrorfs/ on the
// worker when that build is missing, and falls back to SFTP on the same
// connection, with a logged reason, when the agent cannot run.
package agent
