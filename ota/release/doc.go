// Package release is the broker's catalog of firmware: the trusted signing
// keys, the releases (a signed manifest and its image), the image blobs, and
// the uploads in progress.
//
// # Model
//
// A release is created by an upload. The operator first sends the signed
// manifest (BeginUpload): it is parsed and its signature checked against the
// trusted keys right away, so a bad upload fails before any image byte is
// sent. The image then arrives in parts (AppendUpload), each written at the
// offset the broker expects and durable before it is acknowledged, so an
// upload cut off by a disconnect or a broker restart resumes where the
// broker says it stands. The upload is keyed by the image digest the manifest
// names; uploading the same manifest again resumes it. The running SHA-256
// of the received bytes is kept with the upload, so the last part checks the
// digest without reading the image again. When the image is complete and its
// size and digest match, the release is recorded in the same transaction;
// otherwise the upload is removed: a refused upload leaves nothing behind.
//
// Image bytes are stored by digest in fixed-size chunks, immutable once the
// release exists. ReadBlocks reads only the requested range, in one read
// transaction per request.
//
// The broker stores the signed manifest bytes as received and never signs
// anything: it can choose who gets which release and when, but cannot make a
// device install an image that no release key signed.
//
// Keys, releases and uploads are small and kept in memory (loaded at Open);
// changes go through a store transaction and reach memory when it commits.
// Methods are safe for concurrent use.
package release
