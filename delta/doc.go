// Package delta implements the rsync algorithm as pure, streaming Go.
//
// The receiver, which holds the old version (the basis), computes a
// Signature with NewSignature and sends it (MarshalBinary). The sender,
// which holds the new version, calls NewDelta to stream instructions that
// rebuild the new version from the basis; the receiver applies them with
// Patch, which verifies the result's SHA-256 and returns ErrMismatch if it
// does not match (the caller then resends the file whole).
//
// # Algorithm
//
// The basis is cut into blocks of BlockSize(size) bytes (≈√size, multiple
// of 8, in [700, 128 KiB]); the last block may be shorter. Per block the
// signature holds rsync's weak checksum (s1 = Σ bytes, s2 = Σ prefix sums,
// each mod 2^16) and a prefix of its 128-bit XXH3 hash (as rsync 3.2's
// XXH128), 4 to 16 bytes chosen from the file's size so that a false match
// in a file is less likely than 2^-30; the whole-file SHA-256 backs it up). NewDelta slides a window of one block over the new version, rolling
// the weak sum in O(1) per byte, looks it up in a hash table keyed on the
// weak sum and confirms candidates with the strong hash. On a match it
// emits COPY and jumps a whole block; otherwise the byte joins a pending
// literal. The successor of the last matched block is tried first, and
// consecutive block COPYs are merged into one run. Near the end of the new
// version the window shrinks so the basis's short last block can match.
//
// Memory: NewSignature holds one block besides the signature; NewDelta a
// hash table over the signature plus one buffer of about
// MaxLiteral + 2 blocks; Patch a few 64 KiB buffers whatever the delta says.
//
// # Signature format (version 2)
//
//	"MFSG" | 0x02 | strong size n (4..16) | uvarint block size | uvarint file size |
//	per block: weak sum (uint32 little-endian) | strong hash prefix (n bytes)
//
// The block count is implied by the sizes; the record area must match it
// exactly, so a lying length cannot make UnmarshalBinary allocate more than
// its input.
//
// # Delta format (version 1)
//
//	"MFDL" | 0x01 | uvarint block size | uvarint basis size |
//	instructions... |
//	0x00 END | uvarint new size | SHA-256 of the new version (32 bytes)
//
// Instructions:
//
//	0x01 LITERAL | uvarint n (1..MaxLiteral) | n bytes
//	0x02 COPY    | uvarint first block | uvarint block count (≥ 1)
//
// A COPY covers blocks [first, first+count) of the basis, the last one
// possibly short. Patch rejects copies outside the basis the header
// describes, out-of-range lengths, unknown opcodes, truncation and trailing
// bytes with ErrCorrupt; a basis shorter than the header says, or a result
// whose size or hash differs from the trailer, yields ErrMismatch.
package delta
