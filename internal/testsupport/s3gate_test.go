package testsupport

import (
	"bytes"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	awss3 "github.com/aws/aws-sdk-go/service/s3"
)

// The gate reports every LastModified Lag behind versitygw's, in headers
// and listings, and a completed multipart object's as its upload's start;
// an object written again by a plain PUT reports its write again.
func TestS3GateShiftsTheStoresTimes(t *testing.T) {
	s := StartS3(t)
	const lag = 5 * time.Minute
	g := StartS3Gate(t, s, S3GateOptions{Lag: lag, MultipartStart: true})
	direct, gated := s.Client(), g.Client()
	bucket := aws.String(s.Bucket)
	head := func(c *awss3.S3, key string) time.Time {
		t.Helper()
		out, err := c.HeadObject(&awss3.HeadObjectInput{Bucket: bucket, Key: aws.String(key)})
		if err != nil {
			t.Fatalf("HEAD %s: %v", key, err)
		}
		return *out.LastModified
	}
	listed := func(c *awss3.S3, key string) time.Time {
		t.Helper()
		out, err := c.ListObjectsV2(&awss3.ListObjectsV2Input{Bucket: bucket, Prefix: aws.String(key)})
		if err != nil || len(out.Contents) != 1 {
			t.Fatalf("list %s: %v %v", key, out, err)
		}
		return out.Contents[0].LastModified.Truncate(time.Second)
	}

	if _, err := gated.PutObject(&awss3.PutObjectInput{Bucket: bucket, Key: aws.String("a/plain"), Body: bytes.NewReader([]byte("x"))}); err != nil {
		t.Fatal(err)
	}
	if got, want := head(gated, "a/plain"), head(direct, "a/plain").Add(-lag); !got.Equal(want) {
		t.Errorf("HEAD through the gate: LastModified %s, want %s", got, want)
	}
	if got, want := listed(gated, "a/plain"), listed(direct, "a/plain").Add(-lag); !got.Equal(want) {
		t.Errorf("listed through the gate: LastModified %s, want %s", got, want)
	}

	key := aws.String("a/multipart")
	began := time.Now().Truncate(time.Second)
	up, err := gated.CreateMultipartUpload(&awss3.CreateMultipartUploadInput{Bucket: bucket, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // LastModified has one-second resolution
	part, err := gated.UploadPart(&awss3.UploadPartInput{Bucket: bucket, Key: key, UploadId: up.UploadId, PartNumber: aws.Int64(1), Body: bytes.NewReader([]byte("y"))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gated.CompleteMultipartUpload(&awss3.CompleteMultipartUploadInput{Bucket: bucket, Key: key, UploadId: up.UploadId,
		MultipartUpload: &awss3.CompletedMultipartUpload{Parts: []*awss3.CompletedPart{{ETag: part.ETag, PartNumber: aws.Int64(1)}}}}); err != nil {
		t.Fatal(err)
	}
	completed := head(direct, "a/multipart")
	if !completed.After(began) {
		t.Fatalf("versitygw reports %s for an upload that began at %s: the gate's rewrite would prove nothing", completed, began)
	}
	for what, got := range map[string]time.Time{"HEAD": head(gated, "a/multipart"), "listed": listed(gated, "a/multipart")} {
		if d := got.Sub(began.Add(-lag)); d < 0 || d >= time.Second {
			t.Errorf("%s through the gate: a multipart object's LastModified %s, want its upload's start %s", what, got, began.Add(-lag))
		}
	}

	if _, err := gated.PutObject(&awss3.PutObjectInput{Bucket: bucket, Key: key, Body: bytes.NewReader([]byte("z"))}); err != nil {
		t.Fatal(err)
	}
	if got, want := head(gated, "a/multipart"), head(direct, "a/multipart").Add(-lag); !got.Equal(want) {
		t.Errorf("an object rewritten by PUT: LastModified %s through the gate, want %s", got, want)
	}
}
