package sandbox

import (
	"errors"
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// The fields of CRI's runtime.v1.PodSandboxConfig the shim reads, decoded
// with protowire: linking k8s.io/cri-api for one message would register
// the whole CRI API's descriptors in every shim process (and in every
// container init libcontainer re-executes the binary for): 200 KiB of
// heap at start. Field numbers are runtime/v1/api.proto's; the tests
// encode with k8s.io/cri-api and decode with this.

// namespaceMode is CRI's NamespaceMode.
type namespaceMode int32

const (
	modePod       namespaceMode = 0
	modeContainer namespaceMode = 1
	modeNode      namespaceMode = 2
	modeTarget    namespaceMode = 3
)

func (m namespaceMode) String() string {
	switch m {
	case modePod:
		return "POD"
	case modeContainer:
		return "CONTAINER"
	case modeNode:
		return "NODE"
	case modeTarget:
		return "TARGET"
	}
	return fmt.Sprintf("mode %d", int32(m))
}

type criDNS struct {
	servers, searches, options []string
}

type criPodConfig struct {
	name, uid, namespace string
	hostname             string
	dns                  *criDNS
	labels, annotations  map[string]string
	cgroupParent         string
	sysctls              map[string]string
	network, pid, ipc    namespaceMode
	userns               *namespaceMode // nil: no userns options (the host's)
	uids, gids           []idMapping    // userns_options' mappings
}

// idMapping is CRI's IDMapping.
type idMapping struct{ hostID, containerID, length uint32 }

// field walks a message's fields, calling fn for each with its number,
// wire type and value bytes (for varints, the value is in v).
func fields(b []byte, fn func(num protowire.Number, typ protowire.Type, data []byte, v uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		var (
			data []byte
			v    uint64
		)
		switch typ {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			data, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if err := fn(num, typ, data, v); err != nil {
			return err
		}
	}
	return nil
}

var errWireType = errors.New("unexpected wire type")

func str(typ protowire.Type, data []byte) (string, error) {
	if typ != protowire.BytesType {
		return "", errWireType
	}
	return string(data), nil
}

// mapEntry decodes a map<string,string> entry into m.
func mapEntry(m map[string]string, typ protowire.Type, data []byte) error {
	if typ != protowire.BytesType {
		return errWireType
	}
	var k, val string
	err := fields(data, func(num protowire.Number, typ protowire.Type, data []byte, _ uint64) error {
		s, err := str(typ, data)
		switch num {
		case 1:
			k = s
		case 2:
			val = s
		}
		return err
	})
	m[k] = val
	return err
}

func decodeCRIPodConfig(b []byte) (*criPodConfig, error) {
	c := &criPodConfig{labels: map[string]string{}, annotations: map[string]string{}, sysctls: map[string]string{}}
	err := fields(b, func(num protowire.Number, typ protowire.Type, data []byte, _ uint64) error {
		var err error
		switch num {
		case 1: // metadata
			err = c.metadata(typ, data)
		case 2:
			c.hostname, err = str(typ, data)
		case 4:
			c.dns, err = decodeDNS(typ, data)
		case 6:
			err = mapEntry(c.labels, typ, data)
		case 7:
			err = mapEntry(c.annotations, typ, data)
		case 8:
			err = c.linux(typ, data)
		}
		if err != nil {
			return fmt.Errorf("field %d: %w", num, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (c *criPodConfig) metadata(typ protowire.Type, data []byte) error {
	if typ != protowire.BytesType {
		return errWireType
	}
	return fields(data, func(num protowire.Number, typ protowire.Type, data []byte, _ uint64) error {
		var err error
		switch num {
		case 1:
			c.name, err = str(typ, data)
		case 2:
			c.uid, err = str(typ, data)
		case 3:
			c.namespace, err = str(typ, data)
		}
		return err
	})
}

func decodeDNS(typ protowire.Type, data []byte) (*criDNS, error) {
	if typ != protowire.BytesType {
		return nil, errWireType
	}
	d := &criDNS{}
	err := fields(data, func(num protowire.Number, typ protowire.Type, data []byte, _ uint64) error {
		s, err := str(typ, data)
		if err != nil {
			return err
		}
		switch num {
		case 1:
			d.servers = append(d.servers, s)
		case 2:
			d.searches = append(d.searches, s)
		case 3:
			d.options = append(d.options, s)
		}
		return nil
	})
	return d, err
}

func (c *criPodConfig) linux(typ protowire.Type, data []byte) error {
	if typ != protowire.BytesType {
		return errWireType
	}
	return fields(data, func(num protowire.Number, typ protowire.Type, data []byte, _ uint64) error {
		var err error
		switch num {
		case 1:
			c.cgroupParent, err = str(typ, data)
		case 2: // security_context
			err = c.securityContext(typ, data)
		case 3:
			err = mapEntry(c.sysctls, typ, data)
		}
		return err
	})
}

func (c *criPodConfig) securityContext(typ protowire.Type, data []byte) error {
	if typ != protowire.BytesType {
		return errWireType
	}
	return fields(data, func(num protowire.Number, typ protowire.Type, data []byte, _ uint64) error {
		if num != 1 { // namespace_options
			return nil
		}
		if typ != protowire.BytesType {
			return errWireType
		}
		return fields(data, func(num protowire.Number, typ protowire.Type, data []byte, v uint64) error {
			switch num {
			case 1, 2, 3:
				if typ != protowire.VarintType {
					return errWireType
				}
				m := namespaceMode(int32(v))
				switch num {
				case 1:
					c.network = m
				case 2:
					c.pid = m
				case 3:
					c.ipc = m
				}
			case 5: // userns_options
				if typ != protowire.BytesType {
					return errWireType
				}
				mode := modePod
				err := fields(data, func(num protowire.Number, typ protowire.Type, data []byte, v uint64) error {
					switch num {
					case 1:
						if typ == protowire.VarintType {
							mode = namespaceMode(int32(v))
						}
					case 2, 3:
						m, err := decodeIDMapping(typ, data)
						if err != nil {
							return err
						}
						if num == 2 {
							c.uids = append(c.uids, m)
						} else {
							c.gids = append(c.gids, m)
						}
					}
					return nil
				})
				c.userns = &mode
				return err
			}
			return nil
		})
	})
}

func decodeIDMapping(typ protowire.Type, data []byte) (idMapping, error) {
	var m idMapping
	if typ != protowire.BytesType {
		return m, errWireType
	}
	err := fields(data, func(num protowire.Number, typ protowire.Type, _ []byte, v uint64) error {
		if typ != protowire.VarintType {
			return errWireType
		}
		if v > math.MaxUint32 {
			return fmt.Errorf("IDMapping field %d: %d is not a uint32", num, v)
		}
		switch num {
		case 1:
			m.hostID = uint32(v)
		case 2:
			m.containerID = uint32(v)
		case 3:
			m.length = uint32(v)
		}
		return nil
	})
	return m, err
}
