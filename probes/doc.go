// Package probes holds personas, questions, Assistant-Axis extraction and drift measurement.
package probes
