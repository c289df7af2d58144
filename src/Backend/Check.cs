// Argument checks shared by both backends, so they reject the same mistakes with the same messages.
namespace TaylorCalibrate.Backend;

/// <summary>Throw helpers for op arguments. Messages name the tensor and say what was expected.</summary>
public static class Check
{
    /// <summary>Throws unless <paramref name="t"/> has exactly <paramref name="expected"/> as shape.</summary>
    public static void Shape(Tensor t, string name, params int[] expected)
    {
        if (!t.Shape.AsSpan().SequenceEqual(expected))
            throw new ArgumentException($"tensor '{name}' has shape {t.ShapeText}, expected [{string.Join(",", expected)}]");
    }

    /// <summary>Throws unless the element counts are equal.</summary>
    public static void SameCount(Tensor a, string nameA, Tensor b, string nameB)
    {
        if (a.Count != b.Count)
            throw new ArgumentException($"tensor '{nameB}' has {b.Count} elements {b.ShapeText}, expected {a.Count} like '{nameA}' {a.ShapeText}");
    }

    /// <summary>Throws unless the tensor has the element type.</summary>
    public static void DType(Tensor t, string name, DType expected)
    {
        if (t.DType != expected)
            throw new ArgumentException($"tensor '{name}' is {t.DType}, expected {expected}");
    }

    /// <summary>Throws unless the tensor has at least <paramref name="needed"/> elements.</summary>
    public static void Extent(Tensor t, string name, long needed)
    {
        if (t.Count < needed)
            throw new ArgumentException($"tensor '{name}' {t.ShapeText} has {t.Count} elements, the op addresses {needed}");
    }

    /// <summary>Number of rows of length <paramref name="cols"/> in the tensor; throws unless it divides evenly.</summary>
    public static int Rows(Tensor t, string name, int cols)
    {
        if (cols <= 0 || t.Count % cols != 0)
            throw new ArgumentException($"tensor '{name}' {t.ShapeText} cannot be split into rows of {cols}");
        return checked((int)(t.Count / cols));
    }

    /// <summary>Throws unless the condition holds.</summary>
    public static void That(bool condition, string message)
    {
        if (!condition) throw new ArgumentException(message);
    }
}
