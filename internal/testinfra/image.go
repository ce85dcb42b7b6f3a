package testinfra

import (
	"fmt"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// ImageCreated is the creation time of every image OCIImage builds: fixed,
// so that only their content (and the config edit) tells images apart.
var ImageCreated = v1.Time{Time: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)}

// OCIImage is an OCI image of layers, each with a history entry naming
// createdBy, whose config edit then sets (platform, labels, command).
func OCIImage(layers []v1.Layer, createdBy string, edit func(*v1.ConfigFile)) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	adds := make([]mutate.Addendum, 0, len(layers))
	for _, l := range layers {
		adds = append(adds, mutate.Addendum{Layer: l, History: v1.History{Created: ImageCreated, CreatedBy: createdBy}})
	}
	img, err := mutate.Append(img, adds...)
	if err != nil {
		return nil, fmt.Errorf("append layers: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Created = ImageCreated
	edit(cf)
	return mutate.ConfigFile(img, cf)
}
